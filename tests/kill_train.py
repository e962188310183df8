"""Test helper: run ``train_run`` and SIGKILL this process at a chosen point (never used by tsrec itself).

python kill_train.py PARAMS DATASET VARIANT OUT step:N   killed right after optimizer step N
python kill_train.py PARAMS DATASET VARIANT OUT save:N   killed inside the save of checkpoint-N, after the
                                                         weights, optimizer and RNG state, before trainer_state.json
"""

from __future__ import annotations

import os
import signal
import sys

from transformers import TrainerCallback
from transformers.trainer_callback import TrainerState

from tsrec.core.config import load_params
from tsrec.model.runs import resolve_run
from tsrec.model.sft import train_run


def _die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


class KillAfterStep(TrainerCallback):
    def __init__(self, step: int):
        self.step = step

    def on_step_end(self, args, state, control, **kw):
        if state.global_step == self.step:
            _die()


def kill_in_save(step: int) -> None:
    save = TrainerState.save_to_json

    def save_to_json(self, json_path):
        if os.path.basename(os.path.dirname(json_path)) == f"checkpoint-{step}":
            _die()
        return save(self, json_path)

    TrainerState.save_to_json = save_to_json


def main(params_file: str, ds: str, variant: str, out: str, where: str) -> None:
    kind, step = where.split(":")
    callbacks = []
    if kind == "step":
        callbacks.append(KillAfterStep(int(step)))
    else:
        kill_in_save(int(step))
    train_run(resolve_run(load_params(params_file), ds, variant, out=out), callbacks=callbacks)
    sys.exit("not killed")


if __name__ == "__main__":
    main(*sys.argv[1:])
