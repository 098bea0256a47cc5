"""What :meth:`Network.fit <bpgpu.Network.fit>` prints while it trains: a progress bar or one
line per epoch."""

import sys
import time

__all__ = ["Progress", "format_logs"]


def _isatty(stream):
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False


def format_logs(logs):
    return "  ".join(f"{k} {v:.6g}" for k, v in logs.items())


class Progress:
    """What ``fit`` prints. ``verbose=0``: nothing. ``verbose=1`` on a terminal: a progress bar per
    epoch (tqdm when installed, else a plain one) that shows the epoch's loss and metrics when it
    completes. ``verbose=2``, or 1 when not writing to a terminal: one line per epoch."""

    BAR_WIDTH = 30
    REDRAW_SECONDS = 0.1

    def __init__(self, verbose, stream=None):
        self.stream = sys.stdout if stream is None else stream
        self.verbose = int(verbose)
        self.bar = self.verbose == 1 and _isatty(self.stream)
        self._tqdm_class = _tqdm() if self.bar else None
        self._tqdm = None

    def begin(self, label, n_steps):
        self.label, self.n, self.i = label, n_steps, 0
        self._open = True
        self.t0 = self._drawn = time.perf_counter()
        if self.bar and self._tqdm_class is not None:
            self._tqdm = self._tqdm_class(total=n_steps, desc=label, unit="batch", leave=True,
                                          file=self.stream, dynamic_ncols=True, mininterval=0.1)
        elif self.bar:
            self._draw()

    def advance(self):
        if not self.bar:
            return
        self.i += 1
        if self._tqdm is not None:
            self._tqdm.update(1)
            return
        now = time.perf_counter()
        if now - self._drawn >= self.REDRAW_SECONDS:
            self._drawn = now
            self._draw()

    def _draw(self, tail=""):
        filled = self.BAR_WIDTH * self.i // max(self.n, 1)
        bar = "=" * filled + "." * (self.BAR_WIDTH - filled)
        self.stream.write(f"\r{self.label} [{bar}] {self.i}/{self.n}{tail}")
        self.stream.flush()

    def end(self, logs):
        if not self.verbose:
            return
        text = format_logs(logs)
        seconds = time.perf_counter() - self.t0
        self._open = False
        if self._tqdm is not None:
            self._tqdm.set_postfix_str(text, refresh=False)
            self._tqdm.close()
            self._tqdm = None
        elif self.bar:
            self._draw(f"  {text}  ({seconds:.2f}s)\n")
        else:
            print(f"{self.label}  {text}  ({seconds:.2f}s)", file=self.stream, flush=True)

    def message(self, text):
        if self.verbose:
            print(text, file=self.stream, flush=True)

    def close(self):
        """Close an unfinished bar (after an error or a clean stop)."""
        if self._tqdm is not None:
            self._tqdm.close()
            self._tqdm = None
        elif self.bar and getattr(self, "_open", False):
            self.stream.write("\n")
            self.stream.flush()
        self._open = False


def _tqdm():
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm
