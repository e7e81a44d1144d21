"""Progress bars in a log file: plain lines at an interval and a final count, no carriage returns."""

from __future__ import annotations

import io

from dmlm.util.progress import tqdm


def test_a_bar_written_to_a_file_is_plain_lines(monkeypatch):
    monkeypatch.setenv("DMLM_PROGRESS_SECONDS", "3600")
    log = io.StringIO()
    for _ in tqdm(range(500), desc="tokenize", file=log):
        pass
    with tqdm(total=10, desc="partial", file=log) as bar:
        bar.update(4)
    text = log.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    # an hour's interval: each bar's final count (or where it stopped), once, and nothing in between
    assert len(lines) == 2
    assert lines[0].startswith("tokenize: 100% 500/500") and lines[1].startswith("partial:  40% 4/10")


def test_a_bar_on_a_terminal_is_tqdms_own():
    class Tty(io.StringIO):
        def isatty(self):
            return True

    out = Tty()
    for _ in tqdm(range(3), desc="t", file=out):
        pass
    assert "\r" in out.getvalue()


def test_quiet_transformers_turns_its_bars_off_and_restores_them():
    from transformers.utils import logging as hf_logging

    from dmlm.util.progress import quiet_transformers

    hf_logging.enable_progress_bar()
    before = hf_logging.get_verbosity()
    with quiet_transformers():
        assert not hf_logging.is_progress_bar_enabled() and hf_logging.get_verbosity() == before
    with quiet_transformers(report=False):
        assert hf_logging.get_verbosity() == hf_logging.ERROR
    assert hf_logging.is_progress_bar_enabled() and hf_logging.get_verbosity() == before
    hf_logging.disable_progress_bar()  # a caller's own choice survives too
    with quiet_transformers():
        pass
    assert not hf_logging.is_progress_bar_enabled()
    hf_logging.enable_progress_bar()
