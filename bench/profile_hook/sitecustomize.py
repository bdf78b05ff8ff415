"""Lets the benchmark profile a Python process it started, without a line in the product.

bench/run.py puts this directory first on the PYTHONPATH of the Rasa processes
it starts and sets RASA_OMNIDESK_BENCH_PROFILE_DIR; Python imports this module
at start-up (``site`` imports ``sitecustomize``). Without that variable it does
nothing. With it, SIGUSR1 starts a cProfile of the main thread (where Sanic's
event loop runs) timed by that thread's CPU clock, so time spent waiting in
epoll or descheduled by other work on the machine counts for nothing; SIGUSR2
stops it and writes ``<dir>/<pid>-<n>.prof`` (pstats format; written under
another name first and renamed, so a reader never sees half a file).
"""

import os

_DIR = os.environ.get("RASA_OMNIDESK_BENCH_PROFILE_DIR")

if _DIR:
    _INTO: str = _DIR
    import cProfile
    import signal
    import time
    from typing import Any, List, Optional

    _running: List[Optional[cProfile.Profile]] = [None]
    _written = [0]

    def _start(_signum: int, _frame: Any) -> None:
        if _running[0] is None:
            profile = cProfile.Profile(time.thread_time)
            _running[0] = profile
            profile.enable()

    def _stop(_signum: int, _frame: Any) -> None:
        profile = _running[0]
        if profile is None:
            return
        profile.disable()
        _running[0] = None
        _written[0] += 1
        path = os.path.join(_INTO, f"{os.getpid()}-{_written[0]}.prof")
        profile.dump_stats(path + ".part")
        os.replace(path + ".part", path)

    os.makedirs(_INTO, exist_ok=True)
    signal.signal(signal.SIGUSR1, _start)
    signal.signal(signal.SIGUSR2, _stop)
