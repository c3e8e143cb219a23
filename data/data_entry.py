"""Datasets by name. Each entry returns `(pool, test_pool)` from the parsed options: training and
validation are split from `pool`; `test_pool` is the official test set, or None when the test
set is carved from the pool. The CLI's choices come from here. `log` is the run's logging.Logger."""
import logging


def _fashion_mnist(args, log):
    from data.fashion_mnist import FashionMNIST, download
    if args.download:
        download(args.data_dir, log=log.info)
    return FashionMNIST(args.data_dir, train=True), FashionMNIST(args.data_dir, train=False)


def _carvana(args, log):
    from data.carvana import CarvanaDataset
    pool = CarvanaDataset(args.data_dir, img_size=tuple(args.img_size), cache=args.cache, cache_dir=args.cache_dir,
                          skip_bad=args.skip_bad, num_workers=args.num_workers, log=log)
    return pool, None


DATASETS = {
    "FashionMNIST": _fashion_mnist,
    "Carvana": _carvana,
}


def build_datasets(args, log=logging.getLogger("torch_template")):
    return DATASETS[args.data_type](args, log)
