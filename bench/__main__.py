"""``python -m bench [--quick]``: run every benchmark (``./dev bench``)."""

from bench import core

if __name__ == "__main__":
    core.main()
