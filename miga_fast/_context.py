"""Settings that belong to the calling thread (or asyncio task), not to the process."""

from __future__ import annotations

import contextvars


class ContextSetting:
    """A setting held in a `contextvars.ContextVar` (`var`, set by the subclass): calling the
    class sets it for the current thread or task; used as a context manager, the previous
    value comes back on exit. Other threads keep their own value."""

    var: contextvars.ContextVar

    def __init__(self, value):
        self.previous = self.var.get()
        self.value = value
        self._token = self.var.set(value)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        try:
            self.var.reset(self._token)
        except ValueError:  # exited in another context than it was entered in
            self.var.set(self.previous)
        return False
