"""Output files and folders: checked before any work, written atomically.

The rule (DEVELOPERS.md, docs/safety.md): every output path a command will write is checked before the
model loads and before the first network call, and every file is written through a temporary file in
its own folder and a rename, so a reader never sees half a file and a failure or Ctrl-C leaves the
previous file (or nothing) in place.

Checks (each raises :class:`OutputError`, an :class:`~cmidps.errors.InputError`: one ``error:`` line and
exit code 2 on the command line):

* :func:`check_output_file`: not a folder; its folder exists or can be made and is writable; for images,
  the extension is one PIL can write (asked of PIL, with a trial save); optionally not an existing file.
* :func:`check_output_folder`: not a file; writable; a folder that already holds files is refused unless
  the command's flag (``--overwrite``, ``--resume``) allows it.
* :func:`check_distinct`: no output is (after resolving links, or as a hard link) an input or another
  output; no output folder is or lies inside an input folder, and no input lies inside an output folder.

Writers: :func:`atomic_path` (a context manager that yields a temporary path and renames it into place
on success), :func:`atomic_open`, :func:`write_text`, :func:`write_json`, :func:`save_pil`.
"""
from __future__ import annotations

import contextlib
import io
import json
import os
import tempfile
from pathlib import Path

from .errors import InputError

__all__ = ["OutputError", "check_output_file", "check_output_folder", "check_distinct", "image_format",
           "folder_entries", "is_json_with", "atomic_path", "atomic_open", "write_text", "write_json", "save_pil"]


class OutputError(InputError):
    """An output path that cannot be written safely (a folder where a file is meant, an input, a
    non-empty folder of an earlier run, an extension no image writer knows, an unwritable folder)."""


def _show(path) -> str:
    return repr(str(path))


def _absolute(path) -> Path:
    return Path(os.path.realpath(Path(path).expanduser()))


# --- checks -------------------------------------------------------------------------------------------
def _writable_folder(folder: Path, option: str, shown: str) -> None:
    """Files can be created in ``folder`` or, if it does not exist yet, in its nearest existing ancestor
    (a real trial: root ignores permission bits)."""
    probe = Path(folder).expanduser().absolute()
    while not probe.exists():
        if probe.is_symlink():  # a dangling link on the way
            raise OutputError(f"{option} {shown}: {probe} is a broken link")
        probe = probe.parent
    if not probe.is_dir():
        raise OutputError(f"{option} {shown}: {probe} is a file, not a folder")
    try:
        tempfile.TemporaryFile(dir=probe).close()
    except OSError as exc:
        raise OutputError(f"{option} {shown}: cannot write in {probe} ({exc.strerror or exc})") from None
    return probe


def _name_fits(path: Path, probe: Path, option: str, shown: str) -> None:
    """The file name, and the temporary name it is written through (14 characters longer), fit the
    file system's limit on names."""
    try:
        limit = os.pathconf(probe, "PC_NAME_MAX")
    except (OSError, ValueError, AttributeError):
        limit = 255
    for part in path.parts[len(probe.parts):-1]:  # folders still to be made
        if len(os.fsencode(part)) > limit:
            raise OutputError(f"{option} {shown}: the folder name {part[:20]!r}... is longer than {limit} bytes")
    if len(os.fsencode(path.name)) + 14 > limit:
        raise OutputError(f"{option} {shown}: the file name is too long (at most {limit - 14} bytes here)")


_FORMATS: dict = {}


def image_format(path, modes=("L", "RGB")) -> str:
    """The PIL format that writes ``path``'s extension, for images of every mode in ``modes``; an
    :class:`OutputError` if PIL cannot write it (asked of PIL: its registered extensions, then a trial
    save of a 2x2 image of each mode into memory)."""
    from PIL import Image

    ext = Path(path).suffix.lower()
    key = (ext, tuple(modes))
    if key in _FORMATS:
        return _FORMATS[key]
    Image.init()
    fmt = Image.registered_extensions().get(ext)
    hint = "use .png (lossless)"
    if not ext:
        raise OutputError(f"no file extension; {hint}")  # PIL picks the format by the extension
    if fmt is None or fmt not in Image.SAVE:
        common = [e for e in (".bmp", ".tif", ".tiff", ".webp", ".jpg") if Image.registered_extensions().get(e) in Image.SAVE]
        raise OutputError(f"PIL cannot write the extension {ext!r}; {hint}"
                          + (f", or {', '.join(common)}" if common else ""))
    for mode in modes:
        try:
            Image.new(mode, (2, 2)).save(io.BytesIO(), format=fmt)
        except Exception as exc:  # PIL raises many kinds (OSError, KeyError, ValueError, ...)
            raise OutputError(f"PIL cannot write {mode} images with the extension {ext!r} ({fmt}: {exc}); "
                              f"{hint}") from None
    _FORMATS[key] = fmt
    return fmt


def check_output_file(path, option: str = "--out", image: bool = False, modes=("L", "RGB"),
                      existing: str = "replace", flag: str = "--overwrite", own=None) -> Path | None:
    """Check an output file before any work; returns it as a :class:`~pathlib.Path` (``None`` for
    ``None``).

    Not a folder (nor a path ending in a separator), its folder writable (or creatable), and with
    ``image=True`` an extension PIL can write for ``modes`` (:func:`image_format`). ``existing``: what an
    existing file at ``path`` means: ``"replace"`` (the user named it as the output: it is replaced,
    atomically) or ``"refuse"`` (an :class:`OutputError` naming ``flag``). ``own(path) -> bool``: with
    ``"replace"``, an existing file is replaced only if ``own`` says it is an output of this command (a
    results JSON of the same bench), else refused: a user's other file is never replaced."""
    if path is None:
        return None
    shown = _show(path)
    if str(path).strip() == "":
        raise OutputError(f"{option} is empty; give a file name")
    p = Path(path).expanduser()
    if p.is_dir() or str(path).endswith(("/", os.sep)):
        example = p / ("out.png" if image else "results.json")
        raise OutputError(f"{option} {shown} is a folder; give a file name, e.g. {_show(example)}")
    if image:
        try:
            image_format(p, modes)
        except OutputError as exc:
            raise OutputError(f"{option} {shown}: {exc}") from None
    if p.exists() and not p.is_file():
        raise OutputError(f"{option} {shown} exists and is not a regular file")
    if p.exists() and existing == "refuse":
        raise OutputError(f"{option} {shown} already exists; pass {flag} to replace it, or choose another name")
    if p.exists() and own is not None and not own(p):
        raise OutputError(f"{option} {shown} exists and is not an output of this command; it is not replaced: "
                          f"choose another name (or remove it yourself)")
    probe = _writable_folder(p.parent, option, shown)
    _name_fits(p.absolute(), probe, option, shown)
    if p.exists() and not os.access(p, os.W_OK) and os.geteuid() != 0:
        raise OutputError(f"{option} {shown} exists and is read-only")
    return p


def is_json_with(*keys):
    """An ``own`` test for :func:`check_output_file`: the file is a JSON object with one of ``keys``."""
    def own(path) -> bool:
        try:
            data = json.loads(Path(path).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return False
        return isinstance(data, dict) and any(k in data for k in keys)

    return own


def folder_entries(path) -> list[str]:
    """The names in folder ``path`` (sorted; none if it does not exist)."""
    p = Path(path).expanduser()
    return sorted(e.name for e in p.iterdir()) if p.is_dir() else []


def check_output_folder(path, option: str = "--out", non_empty: str = "allow", flag: str = "--overwrite",
                        mine=None) -> Path:
    """Check an output folder before any work; returns it as a :class:`~pathlib.Path`.

    Not a file, and files can be created in it (or in the nearest existing ancestor, for a new folder).
    ``non_empty``: what a folder that already holds something means: ``"allow"``, or ``"refuse"`` (an
    :class:`OutputError` that lists what it holds and names ``flag``). ``mine``: when given, only these
    names count (the files the command would write); others are left alone and do not count."""
    shown = _show(path)
    if str(path).strip() == "":
        raise OutputError(f"{option} is empty; give a folder")
    p = Path(path).expanduser()
    if p.exists() and not p.is_dir():
        raise OutputError(f"{option} {shown} is a file; give a folder")
    probe = _writable_folder(p, option, shown)
    _name_fits(p.absolute() / "_", probe, option, shown)
    if non_empty == "refuse":
        held = folder_entries(p)
        if mine is not None:
            held = [n for n in held if n in set(mine)]
        if held:
            listed = ", ".join(held[:5]) + (f" and {len(held) - 5} more" if len(held) > 5 else "")
            raise OutputError(f"{option} {shown} is not empty (it holds {listed}); choose a new or empty "
                              f"folder, or pass {flag}")
    return p


def _same(a: Path, b: Path) -> bool:
    if a == b:
        return True
    try:
        return a.exists() and b.exists() and os.path.samefile(a, b)
    except OSError:
        return False


def _inside(inner: Path, outer: Path) -> bool:
    return inner != outer and outer in inner.parents


def check_distinct(outputs: dict, inputs: dict | None = None, folders: dict | None = None,
                   input_folders: dict | None = None) -> None:
    """No output path is an input or another output (compared after resolving links, and as the same
    file for hard links). ``outputs`` / ``inputs``: ``{option: path}`` of files (``None`` values are
    skipped); ``folders`` / ``input_folders``: ``{option: path}`` of output / input folders: an output
    folder may not be, lie inside or hold an input folder or file, nor an output file lie in an input
    folder. An :class:`OutputError` naming both options."""
    def real(d):
        return [(k, _absolute(v), v) for k, v in (d or {}).items() if v is not None and str(v) != ""]

    outs, ins, ofold, ifold = real(outputs), real(inputs), real(folders), real(input_folders)
    ifold += [e for e in ins if e[1].is_dir()]  # an input that is a folder (a model folder) is one
    ins = [e for e in ins if not e[1].is_dir()]
    for i, (ko, po, vo) in enumerate(outs):
        for ki, pi, vi in ins:
            if _same(po, pi):
                raise OutputError(f"{ko} {_show(vo)} is the input {ki} {_show(vi)}: it would be overwritten; "
                                  f"choose another output name")
        for ko2, po2, vo2 in outs[i + 1:]:
            if _same(po, po2):
                raise OutputError(f"{ko} {_show(vo)} and {ko2} {_show(vo2)} are the same file; one would "
                                  f"overwrite the other")
        for kf, pf, vf in ifold:
            if _inside(po, pf) or _same(po, pf):
                raise OutputError(f"{ko} {_show(vo)} lies in the input folder {kf} {_show(vf)}; write it "
                                  f"elsewhere")
    for ko, po, vo in ofold:
        for ki, pi, vi in ins + ifold:
            if _same(po, pi):
                raise OutputError(f"{ko} {_show(vo)} is the input {ki} {_show(vi)}; give a separate output "
                                  f"folder")
            if _inside(po, pi):
                raise OutputError(f"{ko} {_show(vo)} lies inside the input {ki} {_show(vi)} (outputs "
                                  f"would be mixed with the inputs); give a folder outside it")
            if _inside(pi, po):
                raise OutputError(f"the input {ki} {_show(vi)} lies inside the output folder {ko} "
                                  f"{_show(vo)}; give an output folder that does not hold the inputs")


# --- writers ------------------------------------------------------------------------------------------
def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


@contextlib.contextmanager
def atomic_path(path, fsync: bool = True):
    """Yield a temporary path in ``path``'s folder (created) for the caller to write; on success it is
    renamed over ``path`` (``os.replace``: atomic); on any failure, Ctrl-C included, it is removed and
    ``path`` is left as it was. The temporary name starts with a dot and ends in ``.tmp``."""
    path = Path(path).expanduser()  # as the checks read it
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    os.close(fd)
    tmp = Path(tmp)
    try:
        yield tmp
        if fsync:
            with open(tmp, "rb+") as f:
                os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())  # mkstemp makes 0600; give the file the usual permissions
        os.replace(tmp, path)
    except OSError as exc:  # a full disk, a folder made read-only mid-run: one error line, not a traceback
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise OutputError(f"could not write {path} ({exc.strerror or exc}); "
                          f"{'the previous file is unchanged' if path.exists() else 'nothing was written'}") from None
    except BaseException:
        with contextlib.suppress(OSError):
            tmp.unlink()
        raise


@contextlib.contextmanager
def atomic_open(path, mode: str = "w", encoding: str | None = "utf-8", newline=None):
    """``open`` for writing through :func:`atomic_path` (``mode`` ``"w"`` or ``"wb"``)."""
    with atomic_path(path) as tmp:
        with open(tmp, mode, encoding=None if "b" in mode else encoding,
                  newline=None if "b" in mode else newline) as f:
            yield f


def write_text(path, text: str) -> None:
    """Write ``text`` to ``path`` atomically."""
    with atomic_open(path, "w") as f:
        f.write(text)


def write_json(path, obj, indent: int | None = 1) -> None:
    """Write ``obj`` as JSON to ``path`` atomically (a newline at the end)."""
    write_text(path, json.dumps(obj, indent=indent) + "\n")


def save_pil(img, path, modes=None) -> None:
    """Save a PIL image to ``path`` atomically, in the format of its extension (:func:`image_format`)."""
    fmt = image_format(path, modes or (img.mode,))
    with atomic_path(path) as tmp:
        img.save(tmp, format=fmt)
