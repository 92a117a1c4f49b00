"""The documentation cannot drift from the code: every ``freesound ...`` command line in README.md
and docs/*.md names a command and options the CLI has (asked of click itself), every ``make``
target is in the Makefile, and every relative link points to a file and heading that exist."""

from __future__ import annotations

import re
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from conftest import REPO
from freesound.cli import main
from freesound.tools.spaces import EXAMPLE_SPACE

PAGES = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

FENCE = re.compile(r"^```[^\n]*\n(.*?)^```", re.M | re.S)
INLINE = re.compile(r"`([^`]+)`")
#: ``freesound`` as a command word: not inside a path, a URL, a module name or ``'freesound[x]'``.
FREESOUND = re.compile(r"(?<![\w./'\"\[-])freesound(?=\s)")
OPTION = re.compile(r"(?<![\w-])--?[a-zA-Z][\w-]*")
MAKE = re.compile(r"^make\s+([\w-]+)")
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
#: A placeholder where a command name would stand (``freesound COMMAND --help``).
PLACEHOLDER = re.compile(r"^([A-Z_]+|\.\.\.)$")


def snippets(markdown: str) -> list[str]:
    """The code of a markdown page, one command a string.

    Fenced blocks give one string per line (``\\``-continued lines joined, ``#`` comments
    dropped); inline code spans outside them give one string each, whitespace collapsed (a span
    may wrap across lines).
    """
    found = []
    for block in FENCE.findall(markdown):
        for line in block.replace("\\\n", " ").splitlines():
            found.append(" ".join(re.split(r"\s#", line, maxsplit=1)[0].split()))
    prose = FENCE.sub("", markdown)
    found.extend(" ".join(span.split()) for span in INLINE.findall(prose))
    return [snippet for snippet in found if snippet]


def option_names(command: click.Command) -> set[str]:
    """Every option spelling ``command`` accepts, its help options included."""
    names = {"--help", "-h"}
    for param in command.params:
        if isinstance(param, click.Option):
            names.update(param.opts + param.secondary_opts)
    return names


def _check_options(words: list[str], command: click.Command, label: str, snippet: str) -> list[str]:
    valid = option_names(command)
    problems = []
    for option in OPTION.findall(" ".join(words)):
        if option.startswith("--") and option not in valid:
            problems.append(f"`{snippet}`: {label} has no option {option} (it has {', '.join(sorted(valid))})")
    return problems


def check_freesound_command(words: list[str], snippet: str) -> list[str]:
    """Problems with one command line, given its words after ``freesound`` (empty when fine)."""
    problems, position = [], 0
    while position < len(words) and words[position].startswith("-"):
        position += 1
    problems += _check_options(words[:position], main, "freesound", snippet)
    if position == len(words) or PLACEHOLDER.match(words[position]):
        return problems
    name, rest = words[position], words[position + 1:]
    command = main.commands.get(name)
    if command is None:
        return problems + [f"`{snippet}`: no command {name!r} (the CLI has {', '.join(sorted(main.commands))})"]
    return problems + _check_options(rest, command, f"freesound {name}", snippet)


def check_snippet(snippet: str, inline: bool = False) -> list[str]:
    """Problems with every ``freesound`` command in one snippet; an inline span starting with a
    command's name (``train --resume``) is checked as that command too."""
    problems = []
    for match in FREESOUND.finditer(snippet):
        problems += check_freesound_command(snippet[match.end():].split(), snippet)
    words = snippet.split()
    if inline and not FREESOUND.search(snippet) and words and words[0] in main.commands and len(words) > 1:
        problems += check_freesound_command(words, snippet)
    return problems


def makefile_targets() -> set[str]:
    text = (REPO / "Makefile").read_text()
    return set(re.findall(r"^([\w-]+):", text, re.M))


def check_make(snippet: str, targets: set[str]) -> list[str]:
    match = MAKE.match(snippet)
    if match and match[1] not in targets:
        return [f"`{snippet}`: the Makefile has no target {match[1]!r} (it has {', '.join(sorted(targets))})"]
    return []


def heading_anchor(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as dashes."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(path: Path) -> set[str]:
    prose = FENCE.sub("", path.read_text())
    return {heading_anchor(heading) for heading in re.findall(r"^#+\s+(.*)$", prose, re.M)}


def check_links(path: Path) -> list[str]:
    """Relative links of a page whose file, or heading in a markdown file, does not exist."""
    problems = []
    for target in LINK.findall(FENCE.sub("", path.read_text())):
        if re.match(r"[a-z]+:", target):
            continue  # https:, mailto:
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            problems.append(f"{target}: no file {linked}")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            problems.append(f"{target}: no heading with anchor #{anchor} in {linked.name}")
    return problems


def documented(path: Path) -> list[tuple[str, bool]]:
    text = path.read_text()
    inline = {" ".join(span.split()) for span in INLINE.findall(FENCE.sub("", text))}
    return [(snippet, snippet in inline) for snippet in snippets(text)]


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(REPO)))
def test_every_documented_command_and_option_exists(page):
    problems = [problem for snippet, inline in documented(page) for problem in check_snippet(snippet, inline)]
    assert problems == []


@pytest.mark.parametrize("page", PAGES, ids=lambda page: str(page.relative_to(REPO)))
def test_every_documented_make_target_exists(page):
    targets = makefile_targets()
    assert {"demo", "test", "kernel", "gpu-check"} <= targets
    assert [problem for snippet, _ in documented(page) for problem in check_make(snippet, targets)] == []


@pytest.mark.parametrize("page", [*PAGES, REPO / "kernel" / "README.md", REPO / "data" / "README.md"],
                         ids=lambda page: str(page.relative_to(REPO)))
def test_every_relative_link_points_to_an_existing_file_and_heading(page):
    assert check_links(page) == []


def test_the_commands_page_documents_every_command():
    text = (REPO / "docs" / "commands.md").read_text()
    named = {words[words.index("freesound") + 1] for words in (s.split() for s in snippets(text))
             if "freesound" in words[:-1]}
    assert set(main.commands) <= named


def test_where_things_land_lists_every_top_level_entry_of_the_work_folder():
    import freesound.paths

    layout = {re.split(r"[/,]", line.split()[0])[0] for line in freesound.paths.__doc__.splitlines()
              if line.startswith("      ")}
    section = (REPO / "docs" / "commands.md").read_text().split("## Where things land")[1].split("\n## ")[0]
    listed = {re.split(r"[/,]", line.split()[0])[0] for line in FENCE.findall(section)[0].splitlines()}
    assert {"self_training", "tracking", "mlflow.db"} <= layout
    assert sorted(layout - listed) == []


@pytest.mark.parametrize("args, text", [
    (["predict", "--help"], "Writes a submission-format CSV: fname (row_id with --windows, one row per window)"),
    (["evaluate", "--help"], "keyed as the predictions are (fname for clips, row_id for windows)"),
])
def test_the_help_names_window_rows_beside_clip_rows(args, text):
    result = CliRunner().invoke(main, args, prog_name="freesound")
    assert result.exit_code == 0 and text in " ".join(result.output.split())


def test_every_docs_page_is_in_both_indexes():
    pages = {page.name for page in (REPO / "docs").glob("*.md")} - {"README.md"}
    assert pages >= {"commands.md", "experiments.md", "own-data.md", "real-scale.md", "gpus.md", "kernels.md",
                     "original-weights.md", "development.md", "reliability.md", "search.md"}
    readme, index = (REPO / "README.md").read_text(), (REPO / "docs" / "README.md").read_text()
    assert [page for page in sorted(pages) if f"](docs/{page})" not in readme] == []
    assert [page for page in sorted(pages) if f"]({page})" not in index] == []


def test_the_search_page_shows_the_example_space_the_help_shows():
    assert f"```toml\n{EXAMPLE_SPACE}```" in (REPO / "docs" / "search.md").read_text()


def test_the_readme_is_a_front_page_with_the_reference_behind_it():
    readme = (REPO / "README.md").read_text()
    assert 120 <= len(readme.splitlines()) <= 230
    for page in ("docs/commands.md", "docs/reliability.md", "docs/experiments.md", "docs/kernels.md"):
        assert f"]({page})" in readme
    assert "## Bad input and interruptions" in readme
    reliability = anchors(REPO / "docs" / "reliability.md")
    assert {"refused", "warned"} <= reliability


@pytest.mark.parametrize("args", [
    ["train", "small", "--made-up", "3"],  # an unknown option
    ["evaluate", "p.csv", "--labels", "l.csv", "--metric", "auc"],  # a value outside the choices
    ["evaluate"],  # a missing argument
    ["predict", "small"],  # options that do not go together (neither --data nor --audio)
])
def test_the_documented_exit_status_of_a_command_line_click_cannot_parse(args):
    result = CliRunner().invoke(main, args, prog_name="freesound")
    assert result.exit_code == 2 and result.stderr.startswith("Usage: freesound ") and "Traceback" not in result.output
    for page in ("README.md", "docs/commands.md", "docs/reliability.md"):
        text = " ".join((REPO / page).read_text().split())
        assert "exit status 1" in text, page
        assert "click's usage message and exit status 2" in text, page


@pytest.mark.parametrize("snippet, problem", [
    ("freesound train small --data d --made-up 3", "freesound train has no option --made-up"),
    ("freesound export-weights model.pth --format panns", "no command 'export-weights'"),
    ("freesound predict small --audio clips --frames 5", "freesound predict has no option --frames"),
    ("OMP_NUM_THREADS=1 python -m freesound --debug --verbose tag a.wav", "freesound has no option --verbose"),
    ("torchrun --nproc_per_node=2 -m freesound train small --data d --devicez cuda",
     "freesound train has no option --devicez"),
])
def test_a_made_up_command_or_option_is_caught(snippet, problem):
    problems = check_snippet(snippet)
    assert len(problems) == 1 and problem in problems[0]


def test_what_is_not_a_command_line_is_left_alone():
    for snippet in ("pip install 'freesound[listen]'", "freesound.predict.Tagger", "postgresql://u@h/freesound --x",
                    "freesound COMMAND --help", "freesound --debug ...", "freesound train small --data d --fold 0"):
        assert check_snippet(snippet) == []
    assert check_snippet("train --resume", inline=True) == []
    assert "no option --resum" in check_snippet("train --resum", inline=True)[0]
    assert check_snippet("train --resum") == []  # in a code block, only `freesound ...` lines are commands


def test_snippets_join_continued_lines_drop_comments_and_unwrap_inline_spans():
    page = ("Run `freesound features\n  --data d`:\n\n```bash\nfreesound train x \\\n    --epochs 2   # two\n"
            "make demo\n```\n")
    assert snippets(page) == ["freesound train x --epochs 2", "make demo", "freesound features --data d"]
    assert check_make("make demo", {"demo"}) == []
    assert "no target 'dmeo'" in check_make("make dmeo", {"demo"})[0]


def test_a_broken_link_or_anchor_is_caught(tmp_path):
    (tmp_path / "a.md").write_text("# Top\n\n## The demo (`make demo`)\n")
    page = tmp_path / "b.md"
    page.write_text("[ok](a.md#the-demo-make-demo) [web](https://x.org/y) [gone](c.md) [bad](a.md#nope)\n"
                    "```\n[in code](ignored.md)\n```\n")
    assert check_links(page) == [f"c.md: no file {tmp_path / 'c.md'}", "a.md#nope: no heading with anchor #nope in a.md"]
