"""The quick-start job: a short training run and the evaluation of its best checkpoint.

    python demo.py [--data_dir Dataset] [--n_epoch 3]          FashionMNIST, an MLP
    python demo.py --task carvana [--n_epoch 8]                 Carvana, a small UNet, under a minute

With the real files in <data_dir>/FashionMNIST/raw (or <data_dir>/Carvana/train and train_masks)
it trains on them; Carvana then uses a seeded 5% of the cars, to stay short. Without them (and with
no internet needed) it first writes a small SYNTHETIC stand-in in the official format under
<data_dir>/synthetic/ and says so: numbers on it say nothing about the real data set.
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
    parser.add_argument("--task", choices=("vanilla", "carvana"), default="vanilla", help="which demo task")
    parser.add_argument("--data_dir", type=Path, default=Path("Dataset"), help="where the real data is looked for")
    parser.add_argument("--n_epoch", type=int, default=None, help="training epochs (vanilla 3, carvana 8)")
    parser.add_argument("--output_dir", type=Path, default=None,
                        help="where the run folder goes (default Results/Vanilla or Results/SegOnCarvana)")
    args = parser.parse_args()
    sys.path.insert(0, str(ROOT))
    train, evaluate, output_dir, real = (carvana if args.task == "carvana" else vanilla)(args)

    output_dir.mkdir(parents=True, exist_ok=True)
    before = {path for path in output_dir.iterdir()}
    run([*train, "--output_dir", output_dir])
    run_dir = max((path for path in output_dir.iterdir() if path not in before and path.is_dir()),
                  key=lambda path: path.stat().st_mtime)

    banner("Evaluating the best checkpoint on the test set")
    checkpoint = next(run_dir.glob("*_best_ckpt.pth"))
    run([*evaluate, "--model_path", checkpoint, "--viz"])

    banner(f"Done. The run folder is {run_dir}:")
    for path in sorted(path for path in run_dir.iterdir() if not path.name.startswith(".")):  # not the lock
        print(f"    {path.name}{'/' if path.is_dir() else ''}")
    print(f"\nPictures: {run_dir / 'eval' / 'test' / 'viz'}\n"
          f"Curves: tensorboard --logdir {output_dir}\n"
          f"Compare runs: python cli/configcmp.py {compare_hint(output_dir, run_dir)}\n"
          f"Evaluate again: python {evaluate[0]} --model_path {checkpoint} --split val"
          + ("\nNote: these numbers are on SYNTHETIC data." if not real else ""))


def vanilla(args):
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
               "    (same file format, generated patterns; to fetch the real files and train on them, run "
               "`python trainer_vanilla.py --download`)")
    train = ["trainer_vanilla.py", "--data_dir", data_dir, "--n_epoch", args.n_epoch or 3]
    return train, ["eval_vanilla.py"], args.output_dir or Path("Results/Vanilla"), real


def carvana(args):
    folder = args.data_dir / "Carvana"
    real = any((folder / "train").glob("*.jpg")) and (folder / "train_masks").is_dir()
    if real:
        banner(f"Training a small UNet on a seeded 5% of the Carvana cars in {folder}")
        data_dir, sample = folder, ["--train_val_sample_rate", "0.05", "--test_sample_rate", "0.05"]
    else:
        from data.synthetic_carvana import write_carvana
        data_dir, sample = args.data_dir / "synthetic" / "Carvana", []
        write_carvana(data_dir, n_cars=24, views=4, size=(128, 192), seed=0)
        banner(f"No Carvana in {folder}: using SYNTHETIC cars written to {data_dir}\n"
               "    (Kaggle's layout, train/<car>_<NN>.jpg and train_masks/<car>_<NN>_mask.gif; "
               "generated ellipses, not cars)")
    train = ["trainer_seg_on_carvana.py", "--data_dir", data_dir, "--model_type", "UNet", "--img_size", "64", "96",
             "--base_width", "8", "--depth", "3", "--batch_size", "4", "--lr", "3e-3", "--val_ratio", "0.15",
             "--test_ratio", "0.15", "--n_epoch", args.n_epoch or 8, *sample]
    return train, ["eval_seg_on_carvana.py", "--n_snap", "4"], args.output_dir or Path("Results/SegOnCarvana"), real



def compare_hint(output_dir, run_dir):
    """What configcmp compares: every run of the folder once there are two, else this run and the next."""
    runs = [path for path in Path(output_dir).iterdir() if path.is_dir()]
    return f"{output_dir}/*" if len(runs) > 1 else f"{run_dir} <another run folder>"

if __name__ == "__main__":
    main()
