"""``cropwatch retrain``: ``disease`` (one gated retraining run) and ``tick`` (what a timer runs)."""

from __future__ import annotations

from .dispatch import dispatch

COMMANDS = {
    "disease": ("cloud_trainer.retrain:disease_main", "fine-tune on the monitor's field labels, gated by evaluation"),
    "tick": ("cloud_trainer.retrain_tick:main", "retrain when due and promote a winning shadow model (cron/timer)"),
}


def main(argv: list[str], prog: str = "cropwatch retrain") -> int:
    return dispatch(COMMANDS, argv, prog, "command")
