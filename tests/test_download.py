import functools
import hashlib
import http.server
import json
import socket
import threading
import zipfile

import pytest

from conftest import run_module
from scripts.download import download_dsb2018

IDS = [
    "237802ac5005f9cf782367156c46c383efd9e05088e5768ca883cbbe24abadb1",
    "4e23ecf65040f86420e0201134e538951acdeda84fbb274311f995682044dd64",
]


@pytest.fixture()
def server(dsb2018_dir, tmp_path):
    """An HTTP server on 127.0.0.1 serving a small stage1_train.zip in the official layout (id folders at the top)."""
    www = tmp_path / "www"
    www.mkdir()
    archive = www / "stage1_train.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        for sid in IDS:
            for f in sorted((dsb2018_dir / sid).rglob("*.png")):
                zf.write(f, f.relative_to(dsb2018_dir))
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(www))
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{httpd.server_address[1]}/stage1_train.zip", hashlib.md5(archive.read_bytes()).hexdigest()
    httpd.shutdown()


def test_download_checksum_and_prepare(server, tmp_path):
    url, md5 = server
    out = tmp_path / "dl"
    root = download_dsb2018(str(out), url=url, md5=md5, prepare=True, progress=False)
    assert sorted(p.name for p in root.iterdir()) == sorted(IDS)
    assert (out / "stage1_train.zip.md5").read_text().split()[0] == md5
    datalist = json.loads((out / "prepared" / "datalist.json").read_text())
    assert len(datalist["training"]) + len(datalist["validation"]) == 2


def test_download_rejects_wrong_checksum(server, tmp_path):
    url, _ = server
    with pytest.raises(Exception, match="md5 hash check"):
        download_dsb2018(str(tmp_path / "dl"), url=url, md5="0" * 32, progress=False)


@pytest.mark.slow
def test_unreachable_source_is_one_line_naming_the_url(tmp_path):
    """No network (a closed local port here): an error naming the URL and the way round it, not a traceback."""
    with socket.socket() as s:  # a free port that nothing listens on
        s.bind(("127.0.0.1", 0))
        url = f"http://127.0.0.1:{s.getsockname()[1]}/isbi"
    proc = run_module(
        "scripts.download",
        "isbi2012",
        "--out",
        str(tmp_path / "dl"),
        "--base_url",
        url,
        "--progress",
        "false",
        check=False,
        timeout=120,
    )
    assert proc.returncode == 1
    last = proc.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: cannot download {url}/train-volume.tif") and "run the same command again" in last
    assert "Traceback" not in proc.stderr
