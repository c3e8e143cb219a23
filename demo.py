"""The quick-start job: a short FashionMNIST training run and the evaluation of its best checkpoint.

    python demo.py [--data_dir Dataset] [--n_epoch 3]

With the real FashionMNIST files in <data_dir>/FashionMNIST/raw it trains on them. Without them
(and with no internet needed) it first writes a small SYNTHETIC stand-in in the official IDX
format to <data_dir>/synthetic/FashionMNIST/raw and says so: accuracy on it says nothing about
FashionMNIST itself.
"""
import argparse
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent


def banner(text):
    print(f"\n=== {text}", flush=True)


def run(arguments):
    command = [sys.executable, *map(str, arguments)]
    print("$ python " + " ".join(map(str, arguments)), flush=True)
    result = subprocess.run(command, cwd=ROOT)
    if result.returncode != 0:
        sys.exit(result.returncode)


def main():
    parser = argparse.ArgumentParser(description=__doc__.strip().splitlines()[0])
    parser.add_argument("--data_dir", type=Path, default=Path("Dataset"), help="where FashionMNIST/raw is looked for")
    parser.add_argument("--n_epoch", type=int, default=3, help="training epochs")
    parser.add_argument("--output_dir", type=Path, default=Path("Results/Vanilla"), help="where the run folder goes")
    args = parser.parse_args()

    sys.path.insert(0, str(ROOT))
    from data.fashion_mnist import FILES, raw_dir
    real = all(any((raw_dir(args.data_dir) / f"{name}{suffix}").is_file() for suffix in ("", ".gz"))
               for pair in FILES.values() for name in pair)
    data_dir = args.data_dir
    if real:
        banner(f"Training on FashionMNIST from {raw_dir(args.data_dir)}")
    else:
        from data.synthetic_fashion_mnist import write_fashion_mnist
        data_dir = args.data_dir / "synthetic"
        folder = write_fashion_mnist(data_dir, n_train=12000, n_test=2000, seed=0)
        banner(f"No FashionMNIST in {raw_dir(args.data_dir)}: using a SYNTHETIC stand-in written to {folder}\n"
               "    (same file format, generated patterns; get the real data with "
               "`python trainer_vanilla.py --download`)")

    args.output_dir.mkdir(parents=True, exist_ok=True)
    before = {path for path in args.output_dir.iterdir()}
    run(["trainer_vanilla.py", "--data_dir", data_dir, "--output_dir", args.output_dir, "--n_epoch", args.n_epoch])
    run_dir = max((path for path in args.output_dir.iterdir() if path not in before and path.is_dir()),
                  key=lambda path: path.stat().st_mtime)

    banner("Evaluating the best checkpoint on the test set")
    run(["eval_vanilla.py", "--model_path", run_dir / "Vanilla_best_ckpt.pth", "--viz"])

    banner(f"Done. The run folder is {run_dir}:")
    for path in sorted(run_dir.iterdir()):
        print(f"    {path.name}{'/' if path.is_dir() else ''}")
    print(f"\nCurves: tensorboard --logdir {args.output_dir}\n"
          f"Compare runs: python utils/configcmp.py {args.output_dir}/*"
          + ("\nNote: these numbers are on SYNTHETIC data." if not real else ""))


if __name__ == "__main__":
    main()
