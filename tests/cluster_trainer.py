"""The vanilla trainer, recording which samples each optimizer step takes, for tests/test_cluster.py.

Each rank appends `epoch micro-batch batch_size world_size index,index,...` to
`samples.rank<R>.txt` in the run folder for every training micro-batch it draws (a placeholder's
index left out), so a test can rebuild the samples of every global step, whatever the processes.
With KEEP_AT_STEP=N in the environment, rank 0 copies the run folder as `<run>_at<N>` when the state of
step N is saved: a mid-epoch state to resume elsewhere, from the same run as the reference.
Run as a script (also under torchrun) it is the vanilla trainer's command line; with TASK=carvana in
the environment, the Carvana trainer's (KeepingCarvanaTrainer: KEEP_AT_STEP only).
"""
import os
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from data.loader import GlobalBatchSampler  # noqa: E402
from trainer_seg_on_carvana import SegOnCarvanaTrainer  # noqa: E402
from trainer_vanilla import VanillaTrainer  # noqa: E402
from training.callbacks import Callback  # noqa: E402


class RecordingSampler(GlobalBatchSampler):
    record_to = None  # the file, once the run folder exists

    def __iter__(self):
        for index, batch in enumerate(super().__iter__(), start=self.skip):
            real = batch[:self.batch_size_at(index)].tolist()
            with open(self.record_to(), "a") as record:
                record.write(f"{self.epoch} {index} {self.batch_size} {self.world_size} "
                             f"{','.join(map(str, real))}\n")
            yield batch


class KeepAtStep(Callback):
    def __init__(self, step):
        self.step = step

    def on_save(self, trainer):
        if trainer.progress.global_step == self.step and trainer.main_process:
            shutil.copytree(trainer.run.path, trainer.run.path.with_name(f"{trainer.run.path.name}_at{self.step}"))


def keep_at_step():
    keep = os.environ.get("KEEP_AT_STEP")
    return [KeepAtStep(int(keep))] if keep else []


class RecordingTrainer(VanillaTrainer):
    def make_loader(self, dataset, train=False):
        loader = super().make_loader(dataset, train)
        if train:
            loader.sampler.__class__ = RecordingSampler
            loader.sampler.record_to = lambda: self.run.path / f"samples.rank{self.rank}.txt"
        return loader

    def build_callbacks(self):
        return super().build_callbacks() + keep_at_step()


class KeepingCarvanaTrainer(SegOnCarvanaTrainer):
    def build_callbacks(self):
        return super().build_callbacks() + keep_at_step()


if __name__ == "__main__":
    sys.exit((KeepingCarvanaTrainer if os.environ.get("TASK") == "carvana" else RecordingTrainer).main())
