"""Progress bars: whole lines every few percent or seconds where output is not a terminal, tqdm on
a terminal, and every bar in the package made by ``freesound.progress``."""

import io
import re
from pathlib import Path

from tqdm import tqdm

from freesound.progress import LOG_INTERVAL_S, LogProgress, progress_bar

PACKAGE = Path(__file__).resolve().parents[1] / "freesound"


class FakeClock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class TerminalStream(io.StringIO):
    def isatty(self):
        return True


def test_a_log_gets_a_line_every_ten_percent_not_a_redraw_per_step():
    stream, clock = io.StringIO(), FakeClock()
    bar = LogProgress(range(5000), desc="log-mel features", unit="clip", file=stream, clock=clock)
    for _ in bar:
        clock.now += 0.001  # 5 s in all: only the percent steps write
    text = stream.getvalue()
    assert "\r" not in text
    lines = text.splitlines()
    assert len(lines) == 10
    assert [int(re.search(r"(\d+)%", line).group(1)) for line in lines] == list(range(10, 101, 10))
    assert lines[-1].startswith("log-mel features: 100% 5000/5000 [00:05<00:00")


def test_a_slow_bar_writes_every_interval_and_its_final_count_once():
    stream, clock = io.StringIO(), FakeClock()
    bar = progress_bar(total=1000, desc="train", unit="batch", file=stream)
    assert isinstance(bar, LogProgress)  # a StringIO is not a terminal
    bar = LogProgress(total=1000, desc="train", unit="batch", file=stream, clock=clock)
    for _ in range(50):  # 5% in 50 * 30 s: no percent step, a line every LOG_INTERVAL_S
        clock.now += 30.0
        bar.set_postfix(loss="0.1234")
        bar.update()
    clock.now += 1.0
    bar.update()  # not due: shown by close, once
    bar.close()
    bar.close()
    lines = stream.getvalue().splitlines()
    assert len(lines) == 50 * 30 / LOG_INTERVAL_S + 1 == 26
    assert lines[0].startswith("train:   0% 2/1000 [01:00<")
    assert lines[-2].startswith("train:   5% 50/1000 [25:00<") and lines[-2].endswith("loss=0.1234]")
    assert lines[-1].startswith("train:   5% 51/1000 [25:01<")


def test_a_transient_bar_writes_only_its_interval_lines():
    stream, clock = io.StringIO(), FakeClock()
    with LogProgress(total=100, desc="epoch 1", leave=False, file=stream, clock=clock) as bar:
        for _ in range(100):
            clock.now += 1.0
            bar.update()
    lines = stream.getvalue().splitlines()
    assert [line.split(" [")[0] for line in lines] == ["epoch 1:  60% 60/100"]


def test_a_terminal_gets_tqdm_and_a_disabled_bar_writes_nothing():
    terminal = TerminalStream()
    bar = progress_bar(range(3), desc="synth", file=terminal)
    assert isinstance(bar, tqdm) and not isinstance(bar, LogProgress)
    assert list(bar) == [0, 1, 2]
    assert "\r" in terminal.getvalue()
    quiet = io.StringIO()
    assert list(progress_bar(range(3), enabled=False, file=quiet)) == [0, 1, 2]
    assert quiet.getvalue() == ""


class CountingIterable:
    """Counts the iterators made of it: a DataLoader starts its workers on each."""

    def __init__(self, items):
        self.items, self.iterators = items, 0

    def __len__(self):
        return len(self.items)

    def __iter__(self):
        self.iterators += 1
        return iter(self.items)


def test_a_bar_makes_one_iterator_of_its_iterable_and_only_when_iterated():
    """tqdm.auto's asyncio bar calls iter() when built: a DataLoader then started a second, unused
    set of workers every epoch, and drew from torch's generator."""
    for stream, enabled in ((TerminalStream(), True), (io.StringIO(), False), (io.StringIO(), True)):
        items = CountingIterable([1, 2, 3])
        bar = progress_bar(items, file=stream, enabled=enabled)
        assert items.iterators == 0
        assert list(bar) == [1, 2, 3] and items.iterators == 1


def test_every_progress_bar_in_the_package_comes_from_freesound_progress():
    importing = re.compile(r"^\s*(import tqdm|from tqdm)", re.M)
    users = sorted(path.relative_to(PACKAGE).as_posix() for path in PACKAGE.rglob("*.py")
                   if importing.search(path.read_text()))
    assert users == ["progress.py"]
    callers = sorted(path.relative_to(PACKAGE).as_posix() for path in PACKAGE.rglob("*.py")
                     if "progress_bar(" in path.read_text() and path.name != "progress.py")
    assert callers == ["data/features.py", "data/synth.py", "data/synth_like.py", "data/synth_soundscapes.py",
                       "tools/search.py", "training/fold_devices.py", "training/teacher.py", "training/trainer.py"]
