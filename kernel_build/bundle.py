"""Build the Kaggle kernels: one script per ensemble spec, plus the Kaggle CLI metadata files.

``build_kernels`` renders ``kernel/kernel.py`` (one experiment, all its folds) and
``kernel/ensemble_kernel.py`` (experiments, stackers, blend). Each script embeds the whole
``freesound`` package (``kernel_build.payload``) and a weight manifest (``kernel_build.manifest``);
at run time it calls ``freesound.kaggle.runtime.run_kernel``. Two builds of the same sources and weights
are byte-identical: nothing rendered depends on the clock or on local paths.

Alongside, ``kernel/kernel-metadata.json`` (for ``kaggle kernels push``) and
``<work>/experiments/dataset-metadata.json`` (for ``kaggle datasets create``).
"""

from __future__ import annotations

import hashlib
import json
import re
from pathlib import Path

import jinja2

import freesound
from freesound.config import load_ensemble
from freesound.ensembling.specs import ensemble_spec, experiment_spec
from freesound.errors import FreesoundError
from freesound.fileio import atomic_write_text
from freesound.kaggle import COMPETITION, TEST_DIR
from freesound.kaggle.budget import TARGETS
from freesound.paths import predictions_dir
from freesound.paths import weights_root as weights_folder
from freesound.predict.tagger import check_precision
from kernel_build.manifest import build_manifest, missing_weights
from kernel_build.payload import encode_sources, package_sources

TEMPLATES = Path(__file__).parent / "templates"
DEFAULT_DATASET_ID = "<user>/freesound-weights"
# kind -> (template, script file name)
KERNELS = {
    "experiment": ("kernel.py.j2", "kernel.py"),
    "ensemble": ("ensemble_kernel.py.j2", "ensemble_kernel.py"),
}


def build_kernels(work, *, experiment=None, ensemble=None, out_dir="kernel", dataset_id=DEFAULT_DATASET_ID,
                  kernel_id=None, title=None, experiments_dir="experiments", precision="fp16", time_limit=None,
                  allow_unfinished: bool = False, windows: dict | None = None, competition: dict | None = None,
                  target: str | None = None, log=print) -> dict:
    """Render the kernel scripts and the Kaggle metadata files.

    Parameters
    ----------
    work : path-like, the work folder; its ``experiments/`` is the weights dataset
    experiment : str or dict, optional; a trained experiment's name, or a spec dict, for ``kernel.py``
    ensemble : str or dict, optional; an ensemble file's name (``ensemble_spec``), or a spec dict,
        for ``ensemble_kernel.py``
    out_dir : path-like, where the scripts and ``kernel-metadata.json`` go
    dataset_id : str, ``owner/slug`` of the weights dataset on Kaggle
    kernel_id, title : str, optional; the pushed kernel's ``owner/slug`` and title (by default
        derived from the dataset's owner and the pushed spec's name; Kaggle links slug and title)
    experiments_dir : path-like, where ensemble files are looked up
    precision : "fp16" or "fp32", what the kernels predict in on a GPU (the CPU always runs fp32)
    time_limit : float, the kernels' time budget in seconds; default one per device type under
        Kaggle's limits (``freesound.kaggle.budget.DEFAULT_BUDGET_SECONDS``)
    allow_unfinished : bundle folds that have not finished training, with a warning naming them
        (default: refused, ``freesound.paths.experiment_checkpoints``)
    windows : dict, optional (``kernel_build.manifest.windows_entry``): the kernels write one row
        per window of each test soundscape, in ``sample_submission.csv``'s ``row_id`` order
    competition : dict, optional, ``name`` (the folder under ``/kaggle/input``, also the kernel's
        competition source) and ``test_dir`` (its test audio folder); default FSDKaggle2019's
    target : a key of ``freesound.kaggle.budget.TARGETS`` (``cpu4``: BirdCLEF's), optional: its
        budget is the default ``time_limit``, its Kaggle limit goes in the manifest (the kernel logs
        it) and a CPU-only target turns ``enable_gpu`` off in ``kernel-metadata.json``
    log : callable taking one line

    Returns
    -------
    dict: ``kernel`` and/or ``ensemble_kernel`` (script paths), ``kernel_metadata``,
    ``dataset_metadata``

    Raises
    ------
    FreesoundError
        Neither kernel asked for, an unknown precision or target, a window kernel for
        FSDKaggle2019's competition, or a weight file a manifest needs is missing; nothing is written.
    """
    check_precision(precision)
    if target is not None and target not in TARGETS:
        raise FreesoundError(f"unknown Kaggle target {target!r}; choose from {', '.join(TARGETS)}")
    profile = TARGETS[target] if target else None
    if profile is not None and time_limit is None:
        time_limit = profile["budget_seconds"]
    if windows is not None and (competition or {}).get("name", COMPETITION) == COMPETITION:
        # FSDKaggle2019's sample_submission.csv has fname rows: the kernel would stop on it after upload.
        raise FreesoundError("a window kernel reads a competition's soundscapes and its row_id "
                             "sample_submission.csv: name the competition's folder under /kaggle/input and its test "
                             "folder (--competition birdclef-2025 --test-dir test_soundscapes, say)")
    weights_root = weights_folder(work)
    specs = {
        kind: resolve_spec(kind, value, work, experiments_dir, allow_unfinished)
        for kind, value in (("experiment", experiment), ("ensemble", ensemble)) if value
    }
    if not specs:
        raise FreesoundError("nothing to build: name an experiment, an ensemble or both")
    # Check every spec before writing anything, so a failed build leaves the old kernels intact.
    missing = {spec["name"]: missing_weights(spec, weights_root) for spec in specs.values()}
    if any(missing.values()):
        details = "; ".join(f"{name}: {', '.join(paths)}" for name, paths in missing.items() if paths)
        raise FreesoundError(f"cannot build the kernel: weight files missing under {weights_root} ({details}); "
                             "train them first or fix the experiment or ensemble name")

    sources = package_sources(Path(freesound.__file__).parent)
    package = encode_sources(sources)
    log(f"package: freesound {freesound.__version__}, {len(sources)} files, "
        f"{sum(len(text.encode()) for text in sources.values()) / 1e3:.1f} kB of source, "
        f"{len(package) / 1e3:.1f} kB embedded")

    out_dir = Path(out_dir)
    written, used = {}, set()
    for kind, spec in specs.items():
        template, script_name = KERNELS[kind]
        manifest = build_manifest(spec, weights_root, precision, time_limit, oof_lwlrap(work, spec["experiments"]),
                                  windows=windows, competition=competition,
                                  limit_seconds=profile["limit_seconds"] if profile else None)
        used |= {Path(weight["path"]).parts[0] for weight in manifest["weights"]}
        script = render_kernel(template, script_name, package, manifest, dataset_id)
        path = out_dir / script_name
        atomic_write_text(path, script)
        written[Path(script_name).stem] = path
        log_kernel(path, spec, manifest, script, weights_root, log)

    pushed_kind = "ensemble" if "ensemble" in specs else "experiment"
    pushed_name = specs[pushed_kind]["name"]
    title = title or f"Freesound {pushed_name.replace('_', ' ')}"
    kernel_id = kernel_id or f"{dataset_id.split('/')[0]}/{slugify(title)}"
    written["kernel_metadata"] = out_dir / "kernel-metadata.json"
    atomic_write_text(written["kernel_metadata"],
                      to_json(kernel_metadata(KERNELS[pushed_kind][1], kernel_id, title, dataset_id,
                                              (competition or {}).get("name", COMPETITION),
                                              gpu=profile is None or profile["device"] != "cpu")))
    log(f"{written['kernel_metadata']}: pushes {KERNELS[pushed_kind][1]} as {kernel_id} "
        f"(kaggle kernels push -p {out_dir})")

    written["dataset_metadata"] = weights_root / "dataset-metadata.json"
    atomic_write_text(written["dataset_metadata"], to_json(dataset_metadata(dataset_id)))
    log(f"{written['dataset_metadata']}: the weights dataset {dataset_id} "
        f"(kaggle datasets create -p {weights_root} --dir-mode zip; {folder_mb(weights_root):.1f} MB in the folder)")
    unused = sorted(path for path in weights_root.iterdir() if path.is_dir() and path.name not in used)
    if unused:
        names = ", ".join(path.name for path in unused[:5]) + (", ..." if len(unused) > 5 else "")
        log(f"note: {len(unused)} folder(s) in {weights_root} that these kernels do not use ({names}; "
            f"{sum(folder_mb(path) for path in unused):.1f} MB) would be uploaded too; move them out first "
            "to upload less")
    if dataset_id.startswith("<user>/"):
        log("note: replace <user> with your Kaggle user name (--dataset-id) before uploading")
    return written


def resolve_spec(kind: str, value, work, experiments_dir, allow_unfinished: bool = False) -> dict:
    """A spec dict from a name (an experiment under ``<work>/experiments`` or an ensemble file);
    folds that have not finished training are refused unless ``allow_unfinished``."""
    if isinstance(value, dict):
        return value
    if kind == "experiment":
        return experiment_spec(value, work, allow_unfinished=allow_unfinished)
    return ensemble_spec(load_ensemble(value, experiments_dir), work, allow_unfinished)


def oof_lwlrap(work, names) -> dict:
    """Each named experiment's OOF lwlrap from ``<work>/predictions/<name>/oof_scores.json``, where
    there is one (the kernel's order for dropping experiments, ``freesound.kaggle.budget``)."""
    scores = {}
    for name in names:
        path = predictions_dir(work, name) / "oof_scores.json"
        if path.is_file():
            try:
                scores[name] = float(json.loads(path.read_text(encoding="utf-8"))["lwlrap"])
            except (ValueError, KeyError, TypeError) as error:
                raise FreesoundError(f"{path} has no readable lwlrap ({error}); predict {name} again") from None
    return scores


def render_kernel(template: str, script_name: str, package: str, manifest: dict, dataset_id: str) -> str:
    """The kernel script's text: header, the package payload, the manifest and the entry point."""
    environment = jinja2.Environment(
        loader=jinja2.FileSystemLoader(TEMPLATES), undefined=jinja2.StrictUndefined, keep_trailing_newline=True,
        autoescape=False,
    )
    manifest_json = manifest_literal(manifest)
    spec = manifest["spec"]
    windows = manifest.get("windows")
    competition = {"name": COMPETITION, "test_dir": TEST_DIR, **manifest.get("competition", {})}
    return environment.get_template(template).render(
        name=spec["name"],
        experiments=list(spec["experiments"]),
        stackers=list(spec.get("stackers", {})),
        n_weights=len(manifest["weights"]),
        weights_mb=f"{weights_bytes(manifest) / 1e6:.1f}",
        dataset_id=dataset_id,
        script_name=script_name,
        template_name=template,
        version=freesound.__version__,
        content_sha256=hashlib.sha256((package + manifest_json).encode("utf-8")).hexdigest(),
        package=package,
        manifest=manifest_json,
        windows=(f"{windows['seconds']:g} s every {windows['hop']:g} s" if windows else None),
        competition=competition["name"],
        test_dir=competition["test_dir"],
    )


def manifest_literal(manifest: dict) -> str:
    """The manifest as JSON that can sit in a raw ``r'''...'''`` string.

    JSON only has single quotes inside strings, where ``\\u0027`` means the same, so escaping
    them rules out a ``'''`` in a config ending the literal early. Keys keep their order: the
    spec's experiments are in stacking order (the stackers read their probabilities concatenated
    in it), and ``build_manifest`` builds every dict in a fixed order, so rebuilds stay
    byte-identical.
    """
    return json.dumps(manifest, indent=1, ensure_ascii=True).replace("'", "\\u0027")


def weights_bytes(manifest: dict) -> int:
    return sum(weight["bytes"] for weight in manifest["weights"])


def log_kernel(path: Path, spec: dict, manifest: dict, script: str, weights_root: Path, log) -> None:
    """What a kernel embeds: its spec, every weight with size and hash, its configs, its size."""
    stackers = list(spec.get("stackers", {}))
    log(f"{path}: {spec['name']!r}, experiments {', '.join(spec['experiments'])}"
        f"{'; stackers ' + ', '.join(stackers) if stackers else ''}")
    log(f"  weights ({len(manifest['weights'])} files, {weights_bytes(manifest) / 1e6:.1f} MB, "
        f"relative to {weights_root}):")
    for weight in manifest["weights"]:
        log(f"    {weight['path']}  {weight['bytes'] / 1e6:.2f} MB  sha256 {weight['sha256'][:16]}")
    log(f"  configs: {', '.join(manifest['configs']) or 'none found'}")
    limit = manifest["time_limit"]
    limit = (", ".join(f"{seconds:.0f} s on {kind}" for kind, seconds in limit.items()) if isinstance(limit, dict)
             else f"{limit:.0f} s")
    log(f"  time budget: {limit}; experiments kept longest when short of time: {', '.join(manifest['ranking'])}")
    if "windows" in manifest:
        windows = manifest["windows"]
        log(f"  windows: {windows['seconds']:g} s every {windows['hop']:g} s, models combined by {windows['combine']}, "
            f"smoothing {windows['smooth'] or 'none'}, file rescaling {windows['file_rescale'] or 'none'}")
    log(f"  script: {len(script.encode()) / 1e3:.1f} kB")


def kernel_metadata(code_file: str, kernel_id: str, title: str, dataset_id: str,
                    competition: str = COMPETITION, gpu: bool = True) -> dict:
    """``kernel-metadata.json`` for ``kaggle kernels push``.

    ``enable_internet`` is written out because the CLI treats a missing field as true, and the
    competition's kernels had to run offline.
    """
    return {
        "id": kernel_id,
        "title": title,
        "code_file": code_file,
        "language": "python",
        "kernel_type": "script",
        "is_private": True,
        "enable_gpu": gpu,
        "enable_internet": False,
        "dataset_sources": [dataset_id],
        "competition_sources": [competition],
        "kernel_sources": [],
    }


def dataset_metadata(dataset_id: str) -> dict:
    """``dataset-metadata.json`` for ``kaggle datasets create``: title, id and exactly one licence."""
    slug = dataset_id.split("/")[-1]
    return {"title": slug.replace("-", " ").capitalize(), "id": dataset_id, "licenses": [{"name": "CC0-1.0"}]}


def slugify(title: str) -> str:
    """Kaggle's kernel slug for a title: lower case, runs of other characters as one dash."""
    return re.sub(r"[^a-z0-9]+", "-", title.lower()).strip("-")


def folder_mb(folder: Path) -> float:
    """Everything a ``--dir-mode zip`` upload of ``folder`` sends (resume states included)."""
    return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file()) / 1e6


def to_json(value: dict) -> str:
    return json.dumps(value, indent=2) + "\n"
