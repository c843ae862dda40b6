"""Ctrl-C: a checkpoint being written is finished first (nothing half-written), then the
run stops with one line saying where it stopped and how to resume, exit status 130."""

import contextlib
import logging
import signal
import threading
from typing import Iterator, Optional

log = logging.getLogger(__name__)

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as a shell reports it


@contextlib.contextmanager
def deferred_interrupt() -> Iterator[None]:
    """Hold a Ctrl-C (SIGINT) that arrives inside the block until the block is done, then
    raise ``KeyboardInterrupt``: a checkpoint's files are either all written or absent."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []

    def hold(signum, frame):
        received.append(signum)
        log.warning("Ctrl-C: finishing the checkpoint being written, then stopping")

    previous = signal.signal(signal.SIGINT, hold)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


def interrupted_message(prog: str, *, step: Optional[int], last_checkpoint: Optional[str]) -> str:
    """``<prog>: interrupted at step N; resume with resume_from_checkpoint=True (last
    checkpoint step_M)``, or what to do when nothing was saved yet."""
    if step is None:
        return f"{prog}: interrupted before training started; nothing was saved"
    if last_checkpoint is None:
        return (
            f"{prog}: interrupted at step {step}; no checkpoint was saved yet, so a new run starts "
            "over (save_every_n_steps=N saves one every N steps)"
        )
    return (
        f"{prog}: interrupted at step {step}; resume with resume_from_checkpoint=True "
        f"(last checkpoint {last_checkpoint})"
    )


__all__ = ["deferred_interrupt", "EXIT_INTERRUPTED", "interrupted_message"]
