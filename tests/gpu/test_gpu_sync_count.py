"""Host synchronisations per optimizer step on the GPU: the Trainer against a raw Horovod loop (issue 22's
count). Today's reading of the code: the Trainer adds one, the agreed non-finite flag's read per update, and
in 16-mixed GradScaler's own read of its overflow flag; the counts are printed for docs/gpu.md."""
from __future__ import annotations

from pathlib import Path

from tests.launch import results, run_workers

WORKER = Path(__file__).with_name("sync_count_worker.py")
# Beyond the raw loop's, per precision: the agreed flag's read; GradScaler's read of its own.
EXPECTED_EXTRA = {"32": 1, "bf16-mixed": 1, "16-mixed": 2}


def test_the_trainer_adds_no_host_synchronisation_but_its_flag_reads():
    counts = results(run_workers(WORKER, np=1, timeout=240))[0]
    assert counts["control"] == 1, f"the counter missed a known synchronisation: {counts}"
    print(f"host synchronisations per step: raw Horovod loop {counts['raw']:g}, Trainer {counts['trainer']}")
    for precision, per_step in counts["trainer"].items():
        assert per_step <= counts["raw"] + EXPECTED_EXTRA[precision], (precision, counts)
