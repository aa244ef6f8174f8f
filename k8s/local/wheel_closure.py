"""List the requirements that a wheelhouse lacks for another Python than the one that made it.

`pip wheel` on the host resolves environment markers for the host's Python (3.11.7 here), but the
image's Debian Python is 3.11.2, and e.g. redis needs `async-timeout; python_full_version <
"3.11.3"` there. This walks the wheelhouse from the top-level requirements, evaluating every
marker in the *image's* marker environment (a JSON object read from the image's interpreter,
see k8s/local/image.sh), and prints, one per line, each requirement (marker removed) that no wheel
in the folder answers. image.sh `pip wheel`s those and runs this again until it prints nothing.

Usage: python3 wheel_closure.py WHEELHOUSE MARKER_ENV_JSON REQUIREMENTS_FILE
Exit status 0; the output is empty when the wheelhouse is complete for the image.
"""
from __future__ import annotations

import json
import sys
import zipfile
from pathlib import Path

try:
    from packaging.requirements import Requirement
    from packaging.utils import canonicalize_name
except ImportError:  # pip always carries a copy
    from pip._vendor.packaging.requirements import Requirement
    from pip._vendor.packaging.utils import canonicalize_name


def wheels_by_name(folder: Path) -> dict[str, list[Path]]:
    """Canonical project name -> wheel files of that project in folder."""
    out: dict[str, list[Path]] = {}
    for whl in folder.glob("*.whl"):
        out.setdefault(canonicalize_name(whl.name.split("-")[0]), []).append(whl)
    return out


def requires_dist(whl: Path) -> list[str]:
    """The Requires-Dist lines of a wheel's METADATA."""
    with zipfile.ZipFile(whl) as z:
        meta = next(n for n in z.namelist() if n.endswith(".dist-info/METADATA"))
        text = z.read(meta).decode("utf-8", "replace")
    head = text.split("\n\n", 1)[0]
    return [line.split(":", 1)[1].strip() for line in head.splitlines() if line.startswith("Requires-Dist:")]


def applies(req: Requirement, env: dict[str, str], extras: frozenset[str]) -> bool:
    """Whether req's marker holds in env for the extras asked of its parent (or none)."""
    if req.marker is None:
        return True
    return any(req.marker.evaluate({**env, "extra": e}) for e in (extras or {""}) | {""})


def missing(folder: Path, env: dict[str, str], top: list[str]) -> list[str]:
    """Requirements (as text, without marker) reachable from top that no wheel answers."""
    wheels = wheels_by_name(folder)
    queue = [(Requirement(r), frozenset()) for r in top]
    seen: set[tuple[str, frozenset[str]]] = set()
    lacking: list[str] = []
    while queue:
        req, parent_extras = queue.pop()
        if not applies(req, env, parent_extras):
            continue
        name = canonicalize_name(req.name)
        found = [w for w in wheels.get(name, []) if req.specifier.contains(w.name.split("-")[1], prereleases=True)]
        if not found:
            req.marker = None
            lacking.append(str(req))
            continue
        key = (name, frozenset(req.extras))
        if key in seen:
            continue
        seen.add(key)
        for line in requires_dist(found[0]):
            queue.append((Requirement(line), frozenset(req.extras)))
    return sorted(set(lacking))


def main() -> None:
    folder, env_json, req_file = Path(sys.argv[1]), sys.argv[2], Path(sys.argv[3])
    top = [line.strip() for line in req_file.read_text().splitlines() if line.strip() and not line.startswith("#")]
    for line in missing(folder, json.loads(env_json), top):
        print(line)


if __name__ == "__main__":
    main()
