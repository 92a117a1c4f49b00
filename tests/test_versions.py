"""The minimum versions: one list (freesound/versions.py) behind the package metadata and the
kernel's check, compared as numbers, and met by the environment the tests run in."""

import importlib.metadata
import subprocess
import sys
from pathlib import Path

import pytest

from freesound import versions

REPO = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("text, expected", [
    ("2.13.0+cpu", (2, 13, 0)), ("0.10.2.post1", (0, 10, 2)), ("2.0.0rc1", (2, 0, 0)), ("1.24", (1, 24)),
    ("3.11.7", (3, 11, 7)), ("8.2.0.dev0", (8, 2, 0)),
])
def test_version_tuple_keeps_the_numeric_release(text, expected):
    assert versions.version_tuple(text) == expected


def test_a_version_that_is_not_a_number_is_refused():
    with pytest.raises(ValueError, match="not a version: 'unknown'"):
        versions.version_tuple("unknown")


@pytest.mark.parametrize("installed, minimum, older", [
    ("2.13.0+cpu", "2.3", False),  # as strings "2.13" < "2.3": compared as numbers
    ("1.26.4", "1.24", False), ("1.23.5", "1.24", True), ("1.24", "1.24.0", False), ("1.24.0", "1.24", False),
    ("0.10.1", "0.10.2", True), ("0.10.2.post1", "0.10.2", False), ("3.10.12", "3.11", True),
])
def test_is_older_compares_numbers(installed, minimum, older):
    assert versions.is_older(installed, minimum) is older


def test_problems_name_each_old_or_missing_package_in_one_sentence():
    found = versions.problems({"python": "3.10.12", "numpy": "2.4.6", "librosa": "0.10.1", "torch": None})
    assert found == [
        f"python 3.10.12 is older than the {versions.PYTHON} freesound needs; choose a newer environment",
        f"librosa 0.10.1 is older than the {versions.MINIMUM['librosa']} freesound needs; choose a newer "
        f"environment or install librosa>={versions.MINIMUM['librosa']}",
        f"torch is not installed; freesound needs torch {versions.MINIMUM['torch']} or newer",
    ]


def test_a_package_without_metadata_or_module_is_not_installed():
    assert versions.installed_version("no-such-package-for-freesound") is None


def test_this_environment_meets_every_minimum():
    installed = versions.installed_versions(versions.MINIMUM)
    assert None not in installed.values()
    assert versions.problems(installed) == []
    line, problem = versions.kernel_report()
    assert problem is None and line.startswith("versions: python ") and f"torch {installed['torch']}" in line


def test_the_package_metadata_declares_exactly_these_minimums():
    declared = [req for req in importlib.metadata.requires("freesound") if "extra ==" not in req]
    assert sorted(declared) == sorted(versions.requirements())
    assert "numpy>=1.24" in declared and "torch>=2.3" in declared
    assert importlib.metadata.metadata("freesound")["Requires-Python"] == f">={versions.PYTHON}"


def test_constraints_pin_every_minimum_but_torch():
    lines = versions.constraints().splitlines()
    assert lines == [f"{name}=={version}" for name, version in versions.MINIMUM.items() if name != "torch"]
    assert "librosa==0.10.2" in lines


def test_setup_py_can_run_the_file_with_only_the_standard_library():
    # -I -S: no site-packages, no current folder on the path - what a bare build environment has.
    code = "import runpy; print(runpy.run_path('freesound/versions.py')['requirements']())"
    result = subprocess.run([sys.executable, "-I", "-S", "-c", code], cwd=REPO, capture_output=True, text=True)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == str(versions.requirements())
