"""Run a module as ``__main__`` with the channel clients pointed at local fakes.

    CHANNEL_API_TELEGRAM=http://127.0.0.1:PORT \\
        python -m tests.channel_apis.on_fakes rasa run --credentials credentials.yml

Each ``CHANNEL_API_*`` variable of ``redirect.ENVIRONMENT`` that is set points its
client library at that URL for the whole process (``redirect.from_environment``),
then the module runs as its console script would: ``rasa`` runs rasa/__main__.py
with the rest of the arguments. Run it from the repository root (or with the
root on PYTHONPATH), so that ``tests`` imports.
"""

import contextlib
import runpy
import sys
from typing import List

from tests.channel_apis import redirect


def main(argv: List[str]) -> None:
    if not argv:
        sys.exit("usage: python -m tests.channel_apis.on_fakes MODULE [ARGUMENTS...]")
    with contextlib.ExitStack() as stack:
        applied = redirect.from_environment(stack)
        for api, url in sorted(applied.items()):
            print(f"on_fakes: {api} -> {url}", file=sys.stderr, flush=True)
        sys.argv = list(argv)
        runpy.run_module(argv[0], run_name="__main__", alter_sys=True)


if __name__ == "__main__":
    main(sys.argv[1:])
