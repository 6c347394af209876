"""pytest that survives its own process: where a test kills the process (a signal, a hang stopped by
pytest-timeout's os._exit) or leaves the CUDA context broken (a kernel's illegal address is sticky: every
later CUDA call in the process fails), a fresh pytest resumes after that test, until every selected test
has run once.

    python -m benchmarks.resuming_pytest [PYTEST ARGS...]

Why: on the GPU machine of session 12 a check that raised in the body of check_deform_conv2d_args killed
the process, and `pytest -k cuda` lost every test after it. A kernel's fault would lose them the same
way, or fail each of them with the first one's error.

How: this module is also the pytest plugin (``-p benchmarks.resuming_pytest``) that keeps a journal
(RCM_FSAD_TEST_JOURNAL): a line as each test starts, one per failure report, one as it finishes. After
each test it synchronises the device where CUDA is in use; where that fails, it writes why and stops the
session. A new round deselects every test the journal says started. A round that ended with a started
test unfinished, or with a lost context, is followed by another, at most MAX_ROUNDS in all; where a
process died, the failures it had not yet printed are printed from the journal.

Exit status: 0 when every round passed (pytest's 0, or 5 for a round with nothing left to run), 1
otherwise; each test that died or broke the context is listed at the end, as is a death outside any test
(after which another round starts, if the round ran tests) and a stop from outside (SIGTERM: gpu_check's
timeout). --maxfail counts within a round.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional

import pytest

JOURNAL_ENV = "RCM_FSAD_TEST_JOURNAL"
MAX_ROUNDS = 20
MAX_REPORT_CHARS = 4000
REPO = Path(__file__).resolve().parent.parent
_session: Optional[pytest.Session] = None  # of this pytest process, for the plugin


# ---- the plugin, in each pytest process ----------------------------------------------------------------

def _journal() -> Optional[str]:
    return os.environ.get(JOURNAL_ENV)


def _append(event: str, nodeid: str, text: str = "") -> None:
    """One journal line, on disk before the test goes on: the process may die in its next instruction.
    Between newlines, so that a line cut by a death mid-write stands alone (read_journal skips it)."""
    with open(_journal(), "a", encoding="utf-8") as journal:
        journal.write("\n" + json.dumps({"event": event, "nodeid": nodeid, "text": text}) + "\n")
        journal.flush()
        os.fsync(journal.fileno())


def cuda_context_error() -> Optional[str]:
    """Why the CUDA context cannot be used any more (a kernel's sticky error), or None."""
    torch = sys.modules.get("torch")
    if torch is None or not torch.cuda.is_initialized():
        return None
    try:
        torch.cuda.synchronize()
    except RuntimeError as error:
        return str(error).splitlines()[0]
    return None


def pytest_collection_modifyitems(config, items):
    if not _journal():
        return
    started = {entry.nodeid for entry in read_journal(Path(_journal()))}
    done = [item for item in items if item.nodeid in started]
    if done:
        config.hook.pytest_deselected(items=done)
        items[:] = [item for item in items if item.nodeid not in started]


def pytest_sessionstart(session):
    global _session
    _session = session


def pytest_runtest_logstart(nodeid, location):
    if _journal():
        _append("start", nodeid)


def pytest_runtest_logreport(report):
    """A failure's report, kept: pytest prints them at the end of the session, which a process that dies
    never reaches."""
    if _journal() and report.failed:
        _append("failed", report.nodeid, f"{report.when}: {report.longreprtext}"[:MAX_REPORT_CHARS])


def pytest_runtest_logfinish(nodeid, location):
    """After each test the device is synchronised: where the CUDA context is lost, the session stops there
    (printing its reports as usual), and the next round goes on in a fresh process."""
    if not _journal():
        return
    # Before "end": a process that dies or hangs (until pytest-timeout ends it) in the synchronisation
    # died in this test.
    error = cuda_context_error()
    _append("end", nodeid)
    if error is not None:
        _append("lost", nodeid, error)
        _session.shouldstop = f"resuming_pytest: the CUDA context is lost after {nodeid}: {error}"


# ---- the runner ------------------------------------------------------------------------------------------

@dataclass
class JournalEntry:
    """A test the journal saw start: whether it finished, its failure reports, and why the CUDA context was
    lost after it (None: it was not)."""

    nodeid: str
    finished: bool = False
    failures: List[str] = field(default_factory=list)
    lost: Optional[str] = None


def journal_lines(path: Path) -> int:
    return len(path.read_text(encoding="utf-8").splitlines()) if path.exists() else 0


def read_journal(path: Path, first_line: int = 0) -> List[JournalEntry]:
    """The tests the journal at path saw start from its line first_line on, in the order they started."""
    entries: Dict[str, JournalEntry] = {}
    if not path.exists():
        return []
    for line in path.read_text(encoding="utf-8").splitlines()[first_line:]:
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # the blank lines between records, or one cut by a death
            continue
        nodeid = record["nodeid"]
        if record["event"] == "start":
            entries[nodeid] = JournalEntry(nodeid)
        elif nodeid in entries:
            entry = entries[nodeid]
            if record["event"] == "end":
                entry.finished = True
            elif record["event"] == "failed":
                entry.failures.append(record["text"])
            elif record["event"] == "lost":
                entry.lost = record["text"]
    return list(entries.values())


def print_unreported_failures(entries: List[JournalEntry]) -> None:
    """The failures of a round whose process never reached the end of its session, which prints them."""
    for entry in entries:
        for failure in entry.failures:
            print(f"\nresuming_pytest: FAILED {entry.nodeid}\n{failure}", flush=True)


def _stop(signum, frame):
    raise KeyboardInterrupt


def main(argv: Optional[List[str]] = None) -> int:
    pytest_args = list(sys.argv[1:] if argv is None else argv)
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
    casualties: List[str] = []
    passed = True
    # gpu_check's timeout ends the step with SIGTERM: what the journal holds is still reported. (Only the
    # main thread may set a handler.)
    on_main_thread = threading.current_thread() is threading.main_thread()
    previous_handler = signal.signal(signal.SIGTERM, _stop) if on_main_thread else None
    round_start: Optional[int] = None  # the journal line where the running round began
    try:
        with tempfile.TemporaryDirectory(prefix="resuming_pytest.") as work:
            journal = Path(work) / "journal"
            env[JOURNAL_ENV] = str(journal)
            try:
                for round_ in range(1, MAX_ROUNDS + 1):
                    round_start = journal_lines(journal)
                    command = [sys.executable, "-m", "pytest", "-p", "benchmarks.resuming_pytest", *pytest_args]
                    returncode = subprocess.run(command, env=env).returncode
                    new = read_journal(journal, round_start)
                    round_start = None
                    died = [e for e in new if not e.finished]
                    lost = [e for e in new if e.lost is not None]
                    casualties += [f"{e.nodeid}: the process died in it (exit {returncode})" for e in died]
                    casualties += [f"{e.nodeid}: the CUDA context was lost after it: {e.lost}" for e in lost]
                    # pytest's own exit codes are 0 to 5; another one, with no test unfinished, is a death
                    # outside any test (a fixture's teardown at the session's end, an exit handler)
                    outside = not died and returncode not in range(6)
                    if outside:
                        after = f"after {new[-1].nodeid}" if new else "in a round that ran no test"
                        casualties.append(f"pytest exited {returncode} outside any test, {after}")
                    if died or outside:
                        print_unreported_failures(new)
                    nothing_left = round_ > 1 and returncode == pytest.ExitCode.NO_TESTS_COLLECTED
                    passed &= returncode == 0 or nothing_left
                    if not (died or lost or (outside and new)) or nothing_left:
                        break
                    print(f"\nresuming_pytest: round {round_} ended early (exit {returncode}); "
                          "the next resumes after the tests it ran", flush=True)
                else:
                    casualties.append(f"stopped after {MAX_ROUNDS} rounds: tests after the last one may not have run")
            except KeyboardInterrupt:
                new = read_journal(journal, round_start) if round_start is not None else []
                print_unreported_failures(new)
                running = [e.nodeid for e in new if not e.finished]
                casualties.append("stopped from outside (SIGTERM or Ctrl-C) "
                                  + (f"in {running[0]}" if running else "between tests"))
                passed = False
    finally:
        if on_main_thread:
            signal.signal(signal.SIGTERM, previous_handler if previous_handler is not None else signal.SIG_DFL)
    if casualties:
        print("\nresuming_pytest: tests that killed their process or its CUDA context, and other stops:")
        print("\n".join(f"  {c}" for c in casualties), flush=True)
    return 0 if passed and not casualties else 1


if __name__ == "__main__":
    sys.exit(main())
