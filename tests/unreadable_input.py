"""An input for tests/test_workers.py that a worker process can unpickle.

It lives in a module of its own: a spawned worker imports the module a pickled
class comes from, and a test module imports ``conftest``, which a worker would
resolve to the repository's root conftest.py instead of tests/conftest.py.
"""


class Unreadable:
    """An input whose conversion to an array fails with an error that is not layoutconv's."""

    shape = (2, 3, 17)
    ndim = 3

    def __array__(self, dtype=None, copy=None):
        raise RuntimeError("this input cannot be read")
