"""A cluster that cannot start leaves nothing running and no scratch directory behind."""

import glob
import os
import tempfile
from pathlib import Path
from typing import Dict, Set

import pytest

from tests.cluster.cluster import Cluster
from tests.e2e.stack import StackError

pytestmark = [pytest.mark.cluster, pytest.mark.e2e]


def children() -> Set[int]:
    """The pids whose parent is this process (every part of a cluster is started from here)."""
    found = set()
    for status in glob.glob("/proc/[0-9]*/status"):
        try:
            text = Path(status).read_text()
        except OSError:
            continue
        for line in text.splitlines():
            if line.startswith("PPid:") and int(line.split()[1]) == os.getpid():
                found.add(int(status.split("/")[2]))
    return found


def scratch_dirs() -> Set[str]:
    """PostgreSQL's data and nginx's temp directories of clusters."""
    return set(glob.glob(os.path.join(tempfile.gettempdir(), "rasa-omnidesk-*")))


def test_a_replica_that_exits_at_start_up_stops_everything_and_names_itself(
    cluster_programs: Dict[str, str], tmp_path: Path
) -> None:
    before_children, before_dirs = children(), scratch_dirs()
    broken = {"connectors.omnidesk.OmnideskInput": {"customer_channels": {"no-such-channel": {}}}}
    with pytest.raises(StackError, match="Rasa replica rasa-"):
        Cluster.start(
            log_dir=tmp_path,
            callback_url="http://127.0.0.1:9/bot",
            credentials_override=broken,
            timeout=120,
        )
    assert children() - before_children == set()
    assert scratch_dirs() - before_dirs == set()
    # It got as far as the replicas: the stores and the proxy had started.
    assert (tmp_path / "postgres.log").exists()
    assert (tmp_path / "nginx.log").exists()
