"""Stage `check`: runs first, on every `dvc repro` and `dvc exp run`, and costs a Python start-up.

DVC decides whether `download` reruns from its hash of the image folder, which skips links to
folders: a class folder linked in from elsewhere after a run changes no hash, and download (whose
own check refuses it) would be skipped. So this stage runs every time (`always_changed` in
dvc.yaml), before download, without TensorFlow or an image decoded:

- params.yaml is validated, as every stage does (a mistake stops the run here, at once);
- with `data.dataset: folder`, a link that leads outside the folder, loops or leads nowhere, and a
  class name that would not stay one line, are refused (`folders.check_folder`);
- data/folder_links.json records the links inside the folder and where they lead. download
  depends on it, so adding or retargeting a link reruns download; unchanged, it stays the same
  bytes and nothing reruns.
"""

from tlpipe.core.jsonfiles import save_json
from tlpipe.core.params import load_params
from tlpipe.core.paths import FOLDER_LINKS_FILE
from tlpipe.core.runtime import run_stage
from tlpipe.data.folders import check_folder


def main() -> None:
    params = load_params()
    folder = params.data.image_folder
    links = check_folder(folder) if folder is not None else {}
    save_json(FOLDER_LINKS_FILE, links)


if __name__ == "__main__":
    run_stage(main)
