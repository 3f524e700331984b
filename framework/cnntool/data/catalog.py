"""Named datasets that cnntool downloads: MNIST and Fashion-MNIST, with their published checksums.

Each is the four IDX files MNIST made standard, fetched once from public mirrors (tried in
order) into a cache folder: `$CNNTOOL_DATA_DIR/<name>/`, else the user's cache folder
(`~/.cache/cnntool/datasets/<name>/` on Linux). A copy installed by a system package
(Debian's `dataset-fashion-mnist` puts one in /usr/share/datasets/fashion-mnist) is used
where it is, without downloading.

A file is known by its sha256. Each file accepts the sha256 of the published archive, of its
uncompressed content (for people who gunzipped it), and of known repackagings of the same
content. So any folder holding these files, passed with `--data PATH`, is recognised as the
named dataset and gets its class names.

Where the values come from. MNIST: the sha256 sums that TensorFlow Datasets, torchvision's
mirror users and others pin for https://storage.googleapis.com/cvdf-datasets/mnist/ (the same
bytes as the original yann.lecun.com files); several independent sources agree.
Fashion-MNIST: the archives' sha256 as TensorFlow Datasets pins them. Debian's
dataset-fashion-mnist 0.0~git20200523.55506a9-1 ships the same deflate streams with the gzip
header's file name and date stripped; putting them back (dates 1504176606 and 1504176627)
rebuilds files whose md5 matches the one Zalando publishes and whose sha256 matches the
values below, which tests/test_download.py checks against the installed package.
"""

from __future__ import annotations

import os
import sys
from dataclasses import dataclass, field
from pathlib import Path

from cnntool.data.download import DownloadError, RemoteFile, TransferProgress, fetch, sha256_of
from cnntool.errors import DataError

DATA_DIR_ENV = "CNNTOOL_DATA_DIR"
MIRRORS_ENV = "CNNTOOL_DATASET_MIRRORS"


@dataclass(frozen=True)
class NamedDataset:
    """A dataset cnntool knows by name: where to get it, what it holds, how to check it."""

    name: str
    description: str
    classes: tuple[str, ...]
    files: dict[str, RemoteFile]  # by dataset role: x_train, y_train, x_test, y_test
    mirrors: tuple[str, ...]
    homepage: str
    license: str
    train_size: int
    test_size: int
    input_shape: tuple[int, int, int] = (1, 28, 28)
    system_folders: tuple[Path, ...] = field(default_factory=tuple)
    system_package: str | None = None

    def urls(self) -> list[str]:
        """Base URLs to try, in order: `$CNNTOOL_DATASET_MIRRORS` (each base + `<name>/`)
        when set, else the public mirrors."""
        override = os.environ.get(MIRRORS_ENV, "").split()
        if override:
            return [f"{base.rstrip('/')}/{self.name}/" for base in override]
        return list(self.mirrors)

    def provenance(self) -> dict:
        """What a bundle records about where the data came from."""
        return {"origin": self.homepage, "license": self.license}


def idx_file(name: str, size: int, sha256: str, *also: str) -> RemoteFile:
    return RemoteFile(name, size, sha256, also)


MNIST = NamedDataset(
    name="mnist",
    description="handwritten digits 0-9, 28x28 grayscale",
    classes=tuple(str(digit) for digit in range(10)),
    files={
        "x_train": idx_file(
            "train-images-idx3-ubyte.gz",
            9_912_422,
            "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
            "ba891046e6505d7aadcbbe25680a0738ad16aec93bde7f9b65e87a2fc25776db",
        ),
        "y_train": idx_file(
            "train-labels-idx1-ubyte.gz",
            28_881,
            "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
            "65a50cbbf4e906d70832878ad85ccda5333a97f0f4c3dd2ef09a8a9eef7101c5",
        ),
        "x_test": idx_file(
            "t10k-images-idx3-ubyte.gz",
            1_648_877,
            "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
            "0fa7898d509279e482958e8ce81c8e77db3f2f8254e26661ceb7762c4d494ce7",
        ),
        "y_test": idx_file(
            "t10k-labels-idx1-ubyte.gz",
            4_542,
            "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
            "ff7bcfd416de33731a308c3f266cc351222c34898ecbeaf847f06e48f7ec33f2",
        ),
    },
    mirrors=(
        "https://storage.googleapis.com/cvdf-datasets/mnist/",
        "https://ossci-datasets.s3.amazonaws.com/mnist/",
    ),
    homepage="http://yann.lecun.com/exdb/mnist/",
    license="MNIST by Yann LeCun, Corinna Cortes and Christopher J.C. Burges, CC BY-SA 3.0",
    train_size=60_000,
    test_size=10_000,
)

FASHION_MNIST = NamedDataset(
    name="fashion-mnist",
    description="Zalando's article images in 10 clothing classes, 28x28 grayscale",
    classes=(
        "T-shirt/top",
        "Trouser",
        "Pullover",
        "Dress",
        "Coat",
        "Sandal",
        "Shirt",
        "Sneaker",
        "Bag",
        "Ankle boot",
    ),
    files={
        "x_train": idx_file(
            "train-images-idx3-ubyte.gz",
            26_421_880,
            "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
            "c59f468a2f672dc815687fe0f83887768d799fd8a3f3276145d20f83aa44d888",
            "b0564c3eedabfbf835052cff8503ea422014ce006caf5b757f851416ee8300c7",  # Debian
        ),
        "y_train": idx_file(
            "train-labels-idx1-ubyte.gz",
            29_515,
            "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
            "bad3541b69d912435c50bb6ba87bec294ff4f6a2e1246121d8633921760443d9",
            "0ae29f65d86684f32d1b9c85147786c547b9c6aebcaf235f0400a0cce308b056",  # Debian
        ),
        "x_test": idx_file(
            "t10k-images-idx3-ubyte.gz",
            4_422_102,
            "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
            "5b4141f0afbad91edebe8549f8fcffe087ea10ca49f1dbef5c9a5cd8815ce37b",
            "cc1d090a38ace84dfa1aa66e3ada7c336ef481a96936906477e6dd344da56eaa",  # Debian
        ),
        "y_test": idx_file(
            "t10k-labels-idx1-ubyte.gz",
            5_148,
            "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
            "0402a96d92fd2663957122ceb108a494c5af83dab82d92729df917d7dec38c34",
            "8d3605d196f4be44669e46906da9733c8131fef761fdbfec72c424d5222f1a05",  # Debian
        ),
    },
    mirrors=(
        "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
        "https://github.com/zalandoresearch/fashion-mnist/raw/master/data/fashion/",
    ),
    homepage="https://github.com/zalandoresearch/fashion-mnist",
    license="Fashion-MNIST by Zalando SE, MIT licence",
    train_size=60_000,
    test_size=10_000,
    system_folders=(Path("/usr/share/datasets/fashion-mnist"),),
    system_package="dataset-fashion-mnist",
)

NAMED = {entry.name: entry for entry in (MNIST, FASHION_MNIST)}


def data_root() -> Path:
    """The folder holding one sub-folder per downloaded dataset."""
    configured = os.environ.get(DATA_DIR_ENV)
    if configured:
        return Path(configured).expanduser()
    return user_cache_dir() / "cnntool" / "datasets"


def user_cache_dir() -> Path:
    """The platform's per-user cache folder (XDG on Linux and other Unixes)."""
    if sys.platform == "win32":
        return Path(os.environ.get("LOCALAPPDATA") or Path.home() / "AppData" / "Local")
    if sys.platform == "darwin":
        return Path.home() / "Library" / "Caches"
    return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")


def identify(digests: dict[str, str]) -> NamedDataset | None:
    """The named dataset whose files have these sha256 digests (by role), if any."""
    for entry in NAMED.values():
        if all(entry.files[role].accepts(digests.get(role, "")) for role in entry.files):
            return entry
    return None


def locate(entry: NamedDataset, progress: TransferProgress | None = None) -> Path:
    """The folder holding `entry`'s files, every one checked by sha256: an installed copy,
    else the cache after downloading whatever it lacks or holds damaged."""
    problems: list[str] = []
    found = find_local(entry, problems)
    if found is not None:
        return found
    cache = data_root() / entry.name
    try:
        fetch(list(entry.files.values()), entry.urls(), cache, progress=progress)
    except DownloadError as exc:
        raise DataError(offline_message(entry, cache, exc, problems)) from None
    return cache


def find_local(entry: NamedDataset, problems: list[str] | None = None) -> Path | None:
    """The first of the system folders and the cache that holds all of `entry`'s files with
    their checksums. What is wrong with an installed copy that fails goes into `problems`."""
    for folder in (*entry.system_folders, data_root() / entry.name):
        if not folder.is_dir():
            continue
        wrong = mismatches(folder, entry)
        if not wrong:
            return folder
        if problems is not None and folder in entry.system_folders:
            problems.append(f"{folder} was not used: {'; '.join(wrong)}")
    return None


def mismatches(folder: Path, entry: NamedDataset) -> list[str]:
    """What is wrong with `folder` as a copy of `entry`: missing files, unknown sha256."""
    wrong = []
    for remote in entry.files.values():
        path = folder / remote.name
        if not path.is_file():
            wrong.append(f"{remote.name} is missing")
            continue
        digest = sha256_of(path)
        if not remote.accepts(digest):
            wrong.append(f"{remote.name} has sha256 {digest}, expected {remote.sha256}")
    return wrong


def offline_message(entry: NamedDataset, cache: Path, exc: DownloadError, problems: list[str]) -> str:
    """Why the download failed, which files are needed, and the ways to provide them."""
    needed = ", ".join(f"{remote.name} (sha256 {remote.sha256})" for remote in entry.files.values())
    ways = ["download them elsewhere and pass their folder with --data PATH", f"or put them in {cache}"]
    if entry.system_package:
        ways.append(f"or install the Debian package {entry.system_package}")
    message = f"cannot download dataset '{entry.name}': {exc}. It needs {needed}; {', '.join(ways)}"
    if exc.partial is not None:
        message += f". {exc.partial} keeps the part that arrived; run again to continue it"
    if problems:
        message += f". {'. '.join(problems)}"
    return message
