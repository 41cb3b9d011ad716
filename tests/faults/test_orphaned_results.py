"""A client process that ends without collecting its results: another client, in another
process, fetches them by msg_id from the Hub, intact."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from corral.client.client import Client
from corral.errors import RemoteError
from tests.faults.conftest import Scripts

SUBMIT_AND_VANISH = """
import json, os, sys
import numpy as np
from corral import Client
from corral.errors import QueryError
from tests.polling import file_appears, until

# the test creates release once this client has exited: until then the tasks run
def slow_array(n, seed, release):
    import numpy as np
    file_appears(release)
    return np.random.default_rng(seed).random(n)

def fails(release):
    file_appears(release)
    raise ValueError("an error kept for later")

rc = Client(sys.argv[1], timeout=30)
rc.wait_for_engines(2, timeout=30)
release = sys.argv[3]
direct = rc[:].apply_async(slow_array, 100_000, 7, release)
view = rc.load_balanced_view()
balanced = [view.apply_async(lambda x: x * x, x) for x in range(20)]
failing = rc[0].apply_async(fails, release)
ids = {"direct": direct.msg_ids, "balanced": [ar.msg_ids[0] for ar in balanced],
       "failing": failing.msg_ids}
# exit once the requests have left (the Hub knows them), before their results are back
def known():
    try:
        return rc.result_status(sum(ids.values(), [])) is not None
    except QueryError:
        return False

until(known, 30, "the Hub to know every request")
assert not direct.done() and not failing.done()
print(json.dumps(ids), flush=True)
if sys.argv[2] == "hard":
    os._exit(0)  # no close, no atexit: as if the process were killed
rc.close()
"""


@pytest.mark.parametrize("how", ["hard", "close"])
def test_results_of_an_exited_client_are_fetched(
    rc: Client, scripts: Scripts, how: str, tmp_path: Path
) -> None:
    connection = Path(rc.connection_file)
    release = tmp_path / "release"
    try:
        output = scripts.run(SUBMIT_AND_VANISH, str(connection), how, str(release))
    finally:
        release.touch()  # the client is gone: let its tasks finish
    ids = json.loads(output.strip())

    expected = np.random.default_rng(7).random(100_000)
    direct = rc.get_result(ids["direct"]).get(timeout=30)
    assert len(direct) == 2
    for array in direct:
        assert array.dtype == expected.dtype and np.array_equal(array, expected)
    assert rc.get_result(ids["balanced"]).get(timeout=30) == [x * x for x in range(20)]
    with pytest.raises(RemoteError) as info:
        rc.get_result(ids["failing"][0]).get(timeout=30)
    assert info.value.ename == "ValueError" and "kept for later" in info.value.evalue
    assert info.value.engine_id == 0
    # the Hub keeps them: a third look (a fresh client) sees the same
    with type(rc)(connection, timeout=30) as other:
        again = other.get_result(ids["direct"] + ids["balanced"]).get(timeout=30)
        assert np.array_equal(again[0], expected) and again[2:] == [x * x for x in range(20)]
        metadata = other.get_result(ids["direct"][1]).metadata
        assert metadata["engine_id"] == 1 and metadata["status"] == "ok"
