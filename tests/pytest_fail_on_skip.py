"""A pytest plugin: `--fail-on-skip` makes any skipped test fail the run.

`make test` loads it (`-p tests.pytest_fail_on_skip --fail-on-skip`) over
every Python test directory: there every requirement is installed, so a
test that skips (torch, gguf, chromium or the CLI missing) is a failure of
the set-up, reported as one instead of a quiet "s" in the summary. Run
alone, `pytest python/tests` still skips what it cannot run.
"""

from __future__ import annotations

import pytest


def pytest_addoption(parser: pytest.Parser) -> None:
    parser.addoption(
        "--fail-on-skip",
        action="store_true",
        help="fail the run when any test is skipped (make test installs every requirement)",
    )


def _skipped(config: pytest.Config) -> list:
    reporter = config.pluginmanager.get_plugin("terminalreporter")
    return reporter.stats.get("skipped", []) if reporter is not None else []


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    if session.config.getoption("--fail-on-skip") and _skipped(session.config):
        session.exitstatus = pytest.ExitCode.TESTS_FAILED


def pytest_terminal_summary(terminalreporter, exitstatus: int, config: pytest.Config) -> None:
    skipped = _skipped(config)
    if not (config.getoption("--fail-on-skip") and skipped):
        return
    terminalreporter.write_sep("=", f"{len(skipped)} skipped under --fail-on-skip: a failure", red=True)
    for report in skipped:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        terminalreporter.write_line(f"SKIPPED {report.nodeid}: {reason}")
