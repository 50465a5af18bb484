"""A request to stop training (SIGTERM from a preempted machine, Ctrl-C): the caller creates one,
installs ``StopRequest.handler`` as its signal handler and passes the request to the training
session, which checkpoints after the current step and stops. No module-level state: each command
(or library caller) has its own."""

from __future__ import annotations


class Stopped(KeyboardInterrupt):
    """A command stopped on request (signal ``signum``); the message says what was kept (a
    checkpoint, the committed shards) and the CLI prints it in one line before exiting 128 + signum."""

    def __init__(self, message: str, signum: int) -> None:
        super().__init__(message)
        self.signum = signum


def raise_stopped(what: str):
    """A signal handler raising ``Stopped(f"stopped by signal N; {what}")`` at once (extraction's
    SIGTERM: the shards committed so far are kept)."""

    def handler(signum: int, frame=None) -> None:
        raise Stopped(f"stopped by signal {signum}; {what}", signum)

    return handler


class StopRequest:
    """Whether, and by which signal, training was asked to stop.

    Armed while a training session runs (``arm`` at its start, ``disarm`` at its close): the first
    signal then records itself and training checkpoints and stops; a second one, or one while
    disarmed, stops at once.
    """

    def __init__(self) -> None:
        self._signal: int | None = None
        self._armed = False

    @property
    def signal(self) -> int | None:
        """The signal that asked training to stop, or None."""
        return self._signal

    def handler(self, signum: int, frame=None) -> None:
        """Signal handler (``signal.signal(SIGTERM, stop.handler)``): record the first signal
        while armed, so training finishes its step, writes a checkpoint and stops.

        Args:
            signum: the signal received.
            frame: the interrupted frame (unused).

        Raises:
            KeyboardInterrupt: a second signal, or one before training started: stop now.
        """
        if self._signal is not None or not self._armed:
            raise KeyboardInterrupt
        self._signal = signum

    def note(self, signum: int) -> None:
        """Ask training to checkpoint and stop after this step, as the first signal would (another
        rank of a data-parallel job received one). A signal already recorded is kept.

        Args:
            signum: the signal to record.
        """
        if self._signal is None:
            self._signal = signum

    def arm(self) -> None:
        """Training starts: forget any earlier request; the first signal from now asks to stop."""
        self._signal, self._armed = None, True

    def disarm(self) -> None:
        """Training ended: forget the request; a signal from now stops at once."""
        self._signal, self._armed = None, False
