"""A data folder in an object store: read through pyarrow's S3 client from a real S3 server started here.

The server is moto's server mode (``moto[server]``, in the ``test`` extra) on a free port of
127.0.0.1; the client is pyarrow's own (the one arielstream uses), not a mock. A run from
``s3://bucket/data?endpoint_override=...`` must give the bytes a run of the same files on disk
gives, once the local copy carries the store's modification times (what the fingerprint records).
"""

from __future__ import annotations

import io
import json
import logging
import os
import shutil
from pathlib import Path

import h5py
import numpy as np
import pyarrow as pa
import pyarrow.fs as pafs
import pyarrow.parquet as pq
import pytest

from arielstream import calibrate, cli
from arielstream.cli.exits import EXIT_CANTCREAT, EXIT_NOINPUT, EXIT_OK
from arielstream.errors import InputError
from arielstream.io import storage
from arielstream.layout import AIRS, discover_observations

moto_server = pytest.importorskip("moto.server")

SECRET = "s3cr3t-never-shown"  # a credential every test checks the outputs, logs and messages for
AWS_ENV = {"AWS_ACCESS_KEY_ID": "arielstream-test", "AWS_SECRET_ACCESS_KEY": SECRET,
           "AWS_EC2_METADATA_DISABLED": "true", "AWS_CONFIG_FILE": os.devnull,
           "AWS_SHARED_CREDENTIALS_FILE": os.devnull}


class Store:
    """moto's S3 server, its address, and a bucket holding a simulated data folder."""

    def __init__(self, server, local: Path):
        host, port = server.get_host_and_port()
        self.server, self.local = server, local
        self.endpoint = f"{host}:{port}"
        self.query = f"endpoint_override={self.endpoint}&scheme=http&region=us-east-1"
        self.fs = pafs.FileSystem.from_uri(f"s3://bucket?{self.query}")[0]

    def url(self, prefix: str = "data", bucket: str = "bucket") -> str:
        return f"s3://{bucket}/{prefix}?{self.query}"

    def upload(self, prefix: str) -> None:
        pafs.copy_files(str(self.local), f"bucket/{prefix}", destination_filesystem=self.fs)


@pytest.fixture(scope="module")
def s3(tmp_path_factory):
    """A running S3 server with ``bucket/data`` (two simulated planets) and their local copy ``store.local``.

    The local files are given the objects' modification times, so a local run records the
    same input fingerprints as a run from the bucket, and the two outputs can be compared whole.
    """
    from arielstream.simulate.dataset import simulate_dataset

    local = tmp_path_factory.mktemp("objstore") / "data"
    simulate_dataset(local, n_planets=2, scale=0.05, seed=11)
    logging.getLogger("werkzeug").setLevel(logging.ERROR)  # moto's request log
    with pytest.MonkeyPatch.context() as mp:
        for name, value in AWS_ENV.items():
            mp.setenv(name, value)
        server = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        server.start()
        try:
            store = Store(server, local)
            create = pafs.FileSystem.from_uri(f"s3://bucket?{store.query}&allow_bucket_creation=true")[0]
            create.create_dir("bucket")
            store.upload("data")
            for info in store.fs.get_file_info(pafs.FileSelector("bucket/data", recursive=True)):
                if info.type == pafs.FileType.File:
                    os.utime(local / info.path[len("bucket/data/"):], ns=(info.mtime_ns, info.mtime_ns))
            yield store
        finally:
            server.stop()


@pytest.fixture
def aws_env(s3, monkeypatch):
    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)
    return s3


def datasets(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path, "r") as f:
        out: dict[str, np.ndarray] = {}
        f.visititems(lambda name, obj: out.__setitem__(name, obj[()]) if isinstance(obj, h5py.Dataset) else None)
        return out


def same(a: dict[str, np.ndarray], b: dict[str, np.ndarray], leave_out: tuple[str, ...] = ()) -> list[str]:
    """The datasets that differ between two outputs (dtype or value), or that one of them lacks."""
    differ = sorted((set(a) ^ set(b)) - set(leave_out))
    for name in sorted(set(a) & set(b)):
        if name in leave_out:
            continue
        x, y = a[name], b[name]
        if x.dtype != y.dtype or not np.array_equal(x, y, equal_nan=x.dtype.kind == "f"):
            differ.append(name)
    return differ


def attributes(path: Path) -> dict[str, object]:
    with h5py.File(path, "r") as f:
        return {k: (v.decode() if isinstance(v, bytes) else v) for k, v in f.attrs.items()}


def everything_written(out: Path) -> str:
    """The output's attributes, provenance and input records, and its log: where a credential must not be."""
    parts = [json.dumps({k: str(v) for k, v in attributes(out).items()})]
    with h5py.File(out, "r") as f:
        for name in ("provenance", "inputs"):
            parts += [bytes(v).decode(errors="replace") for v in f[name][()]]
    log = Path(f"{out}.log")
    if log.exists():
        parts.append(log.read_text())
    return "\n".join(parts)


@pytest.fixture(scope="module")
def local_run(s3, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("local") / "local.h5"
    summary = calibrate(s3.local, out, jobs=2, progress=False)
    assert summary.ok
    return out


def test_a_run_from_the_bucket_gives_the_bytes_of_a_local_run_and_a_rerun_has_nothing_to_do(
        aws_env, local_run, tmp_path, capsys):
    out = tmp_path / "s3.h5"
    summary = calibrate(aws_env.url(), out, jobs=2, progress=False)
    assert summary.ok and len(summary.results) == 3
    assert os.getpid() not in {r.pid for r in summary.results}  # loky workers read the bucket themselves
    # cubes, DQ, provenance, input fingerprints and checksums: every dataset the same
    assert same(datasets(out), datasets(local_run)) == []
    local, remote = attributes(local_run), attributes(out)
    assert remote.pop("source") == f"s3://bucket/data?{aws_env.query}"  # the endpoint is kept
    local.pop("source")
    assert remote == local
    assert SECRET not in everything_written(out)

    # the same URL again: nothing to do, from the command line too
    assert cli.main(["calibrate", aws_env.url(), "-o", str(out), "--jobs", "2", "--no-progress"]) == EXIT_OK
    captured = capsys.readouterr()
    assert "already complete (3 of 3 observation(s)); nothing to do" in captured.out
    assert SECRET not in captured.out + captured.err
    assert cli.main(["calibrate", aws_env.url(), "-o", str(tmp_path / "new.h5"), "--dry-run"]) == EXIT_OK
    assert "observations: 3 of 2 planet(s), 3 to calibrate" in capsys.readouterr().out

    # where the data live is not part of the identity: the local run's output, its inputs now in the bucket
    # (with the same sizes and times), has nothing to do either
    moved = tmp_path / "moved.h5"
    shutil.copy(local_run, moved)
    assert calibrate(aws_env.url(), moved, jobs=2, progress=False).action == "complete"


def test_dask_workers_read_the_bucket_themselves(aws_env, local_run, tmp_path):
    distributed = pytest.importorskip("distributed")
    # the workers are processes of their own, started with this environment (the credentials)
    with distributed.LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=None,
                                  silence_logs=40) as cluster:
        out = tmp_path / "dask.h5"
        summary = calibrate(aws_env.url(), out, backend="dask", scheduler=cluster.scheduler_address,
                            task_timeout=300, progress=False)
    assert summary.ok and os.getpid() not in {r.pid for r in summary.results}
    assert same(datasets(out), datasets(local_run), leave_out=("part", "part_index")) == []
    assert SECRET not in everything_written(out)


def test_an_object_uploaded_again_with_other_bytes_is_recomputed_alone(aws_env, tmp_path):
    aws_env.upload("changed")
    url, out = aws_env.url("changed"), tmp_path / "s3.h5"
    assert calibrate(url, out, jobs=2, progress=False).ok
    before = datasets(out)

    obs = discover_observations(aws_env.local, "train")[0]
    key = f"bucket/changed/{obs.signal_path(AIRS).relative_to(aws_env.local).as_posix()}"
    with aws_env.fs.open_input_file(key) as fh:
        table = pq.read_table(fh)
    old_size = aws_env.fs.get_file_info(key).size
    pixel = 10 * AIRS.columns + 100  # row 10, column 100: inside the AIRS columns the output keeps
    column = pa.array(np.asarray(table.column(pixel)).astype(np.uint16) + np.uint16(700))
    changed = table.set_column(pixel, table.field(pixel), column).replace_schema_metadata({"changed": "yes"})
    sink = io.BytesIO()
    pq.write_table(changed, sink)
    assert len(sink.getvalue()) != old_size  # a change a size-and-time fingerprint sees within the same second
    with aws_env.fs.open_output_stream(key) as fh:
        fh.write(sink.getvalue())

    summary = calibrate(url, out, jobs=2, progress=False)
    assert summary.ok
    assert [(r.planet_id, r.visit) for r in summary.results] == [(obs.planet_id, obs.visit)]
    assert summary.counts.get("recomputed") == [(obs.planet_id, obs.visit)]
    after = datasets(out)
    index = [(int(p), int(v)) for p, v in zip(after["planet_id"], after["visit"], strict=True)].index(
        (obs.planet_id, obs.visit))
    assert not np.array_equal(after["AIRS-CH0/signal"][index], before["AIRS-CH0/signal"][index], equal_nan=True)
    others = [i for i in range(len(after["planet_id"])) if i != index]
    assert np.array_equal(after["AIRS-CH0/signal"][others], before["AIRS-CH0/signal"][others], equal_nan=True)


def test_credentials_in_the_url_are_used_but_never_written_or_shown(aws_env, local_run, tmp_path, capsys):
    url = f"s3://arielstream-test:{SECRET}@bucket/data?{aws_env.query}"
    out = tmp_path / "s3.h5"
    assert cli.main(["calibrate", url, "-o", str(out), "--jobs", "1", "--no-progress", "-v"]) == EXIT_OK
    captured = capsys.readouterr()
    assert SECRET not in captured.out + captured.err
    assert SECRET not in everything_written(out)
    assert attributes(out)["source"] == f"s3://bucket/data?{aws_env.query}"
    assert same(datasets(out), datasets(local_run)) == []


def test_a_data_folder_in_a_bucket_can_be_checked_against_a_manifest_written_from_it(aws_env, tmp_path, capsys):
    manifest = tmp_path / "manifest.json"
    assert cli.main(["manifest", aws_env.url(), "-o", str(manifest)]) == EXIT_OK
    recorded = json.loads(manifest.read_text())
    assert recorded["data_dir"] == f"s3://bucket/data?{aws_env.query}"
    local = json.loads(cli_manifest(aws_env.local, tmp_path / "local.json").read_text())
    assert recorded["files"] == local["files"]  # the same digests, streamed from the bucket
    out = tmp_path / "s3.h5"
    summary = calibrate(aws_env.url(), out, jobs=2, progress=False, planets=[discover_observations(
        aws_env.local, "train")[0].planet_id], verify_inputs=str(manifest))
    assert summary.ok
    # without -o a manifest would be written into the bucket: refused
    assert cli.main(["manifest", aws_env.url()]) == EXIT_CANTCREAT
    assert "give the manifest a local file (-o FILE)" in capsys.readouterr().err


def cli_manifest(data: Path, out: Path) -> Path:
    assert cli.main(["manifest", str(data), "-o", str(out)]) == EXIT_OK
    return out


def unused_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize(("case", "code", "message"), [
    ("missing bucket", EXIT_NOINPUT, "s3://nobucket/data: no such data folder"),
    ("missing prefix", EXIT_NOINPUT, "s3://bucket/nothing-here: no such data folder"),
    ("unreachable", EXIT_NOINPUT, "cannot reach the object store at 127.0.0.1:"),
    ("unknown option", EXIT_NOINPUT, "s3://bucket/data: not a usable URL: Unexpected query parameter"),
    ("unknown scheme", EXIT_NOINPUT, "neither pyarrow nor fsspec reads nosuchfs:// URLs"),
    ("output in the bucket", EXIT_CANTCREAT, "s3://bucket/out.h5: the output must be a local path"),
])
def test_a_bad_location_is_one_line_and_its_exit_code_without_the_credentials(aws_env, tmp_path, capsys,
                                                                              case, code, message):
    data, out = aws_env.url(), str(tmp_path / "o.h5")
    if case == "missing bucket":
        data = aws_env.url(bucket="nobucket")
    elif case == "missing prefix":
        data = aws_env.url("nothing-here")
    elif case == "unreachable":
        data = f"s3://bucket/data?endpoint_override=127.0.0.1:{unused_port()}&scheme=http&region=us-east-1"
    elif case == "unknown option":
        data = f"{aws_env.url()}&secret_key={SECRET}"
    elif case == "unknown scheme":
        data = f"nosuchfs://user:{SECRET}@host/data"
    else:
        out = f"s3://key:{SECRET}@bucket/out.h5?{aws_env.query}"
    assert cli.main(["calibrate", data, "-o", out, "--no-progress"]) == code
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.startswith("arielstream: ")]
    assert len(lines) == 1 and message in lines[0], err
    assert "Traceback" not in err and SECRET not in err
    assert not (tmp_path / "o.h5").exists()


def test_refused_credentials_are_one_line_naming_the_url(aws_env, tmp_path, capsys, monkeypatch):
    from moto.core.authorization import enable_iam_authentication

    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "not-a-key-the-server-knows")
    with enable_iam_authentication():  # the server checks signatures from now on: this key is unknown
        code = cli.main(["calibrate", aws_env.url(), "-o", str(tmp_path / "o.h5"), "--no-progress"])
    err = capsys.readouterr().err
    assert code == EXIT_NOINPUT, err
    assert "arielstream: s3://bucket/data/adc_info.csv: access denied: check the credentials" in err
    assert "Traceback" not in err and SECRET not in err


def test_a_scheme_pyarrow_lacks_is_read_through_fsspec(local_run, s3, tmp_path):
    fsspec = pytest.importorskip("fsspec")
    memory = fsspec.filesystem("memory")
    target = pafs.PyFileSystem(pafs.FSSpecHandler(memory))
    pafs.copy_files(str(s3.local), "/arielstream-test/data", destination_filesystem=target)
    try:
        out = tmp_path / "memory.h5"
        assert calibrate("memory://arielstream-test/data", out, jobs=1, progress=False).ok  # one process: memory://
        # fsspec's memory filesystem keeps no modification times: the fingerprints (and the checksums over them)
        # differ from the local run's, every number is the same
        assert same(datasets(out), datasets(local_run), leave_out=("inputs", "checksum")) == []
        assert attributes(out)["source"] == "memory://arielstream-test/data"
    finally:
        memory.rm("/arielstream-test", recursive=True)


def test_a_remote_path_shows_no_credentials_and_keeps_the_endpoint_options():
    url = f"s3://KEY:{SECRET}@bucket/data?endpoint_override=host:9000&scheme=http&token={SECRET}"
    root = storage.data_folder(url)
    assert isinstance(root, storage.RemotePath)
    signal = root / "train" / "1" / "AIRS-CH0_signal_0.parquet"
    assert str(signal) == "s3://bucket/data/train/1/AIRS-CH0_signal_0.parquet"
    assert SECRET not in repr(signal) and SECRET not in str(InputError(signal, "missing"))
    assert storage.describe(root) == "s3://bucket/data?endpoint_override=host:9000&scheme=http"
    assert storage.locator(signal) == (f"s3://KEY:{SECRET}@bucket/data/train/1/AIRS-CH0_signal_0.parquet"
                                       f"?endpoint_override=host:9000&scheme=http&token={SECRET}")
    assert signal.relative_to(root).as_posix() == "train/1/AIRS-CH0_signal_0.parquet"
    assert storage.scrub(f"failed: {url}", url).count(SECRET) == 0
    assert storage.data_path("file:///tmp/data") == Path("/tmp/data")  # a file:// URL is a local folder


def test_the_spectrum_of_a_file_calibrated_from_the_bucket_reads_the_star_info_and_labels_there(
        aws_env, local_run, tmp_path, caplog):
    from arielstream.products.spectrum import write_spectrum

    out = tmp_path / "s3.h5"
    assert calibrate(aws_env.url(), out, jobs=2, progress=False).ok
    local = tmp_path / "local.h5"
    shutil.copy(local_run, local)
    caplog.set_level(logging.WARNING, logger="arielstream")
    # the star info (transit durations), the split's planets and, with missing="prior", train.csv: from the store
    remote_csv, _, _ = write_spectrum(out, missing="prior")  # (the prior is read before any fit)
    assert not [r for r in caplog.records if "star info" in r.getMessage() or "is not here" in r.getMessage()]
    local_csv, _, _ = write_spectrum(local, missing="prior")
    assert remote_csv.read_text() == local_csv.read_text()
    assert SECRET not in remote_csv.read_text()


def test_score_takes_the_truth_from_the_bucket_and_shows_no_credentials(aws_env, local_run, tmp_path, capsys):
    from arielstream.products.spectrum import write_spectrum

    local = tmp_path / "local.h5"
    shutil.copy(local_run, local)
    submission, _, _ = write_spectrum(local, missing="prior")
    truth = f"s3://arielstream-test:{SECRET}@bucket/data/train.csv?{aws_env.query}"
    assert cli.main(["score", str(submission), truth]) == EXIT_OK
    assert cli.main(["score", str(submission), truth.replace("train.csv", "absent.csv")]) == EXIT_NOINPUT
    captured = capsys.readouterr()
    assert "s3://bucket/data/absent.csv" in captured.err and SECRET not in captured.out + captured.err


def test_a_store_gone_since_the_run_stops_the_spectrum_instead_of_fitting_every_duration(local_run, tmp_path,
                                                                                         monkeypatch):
    from arielstream.products.spectrum import write_spectrum

    for name, value in AWS_ENV.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("AWS_MAX_ATTEMPTS", "1")
    out = tmp_path / "gone.h5"
    shutil.copy(local_run, out)
    with h5py.File(out, "r+") as f:  # calibrated from a store that no longer answers (nothing listens on port 9)
        f.attrs["source"] = "s3://bucket/data?endpoint_override=127.0.0.1:9&scheme=http&region=us-east-1"
    with pytest.raises(InputError, match="--star-info CSV .* --no-star-info") as caught:
        write_spectrum(out)
    assert "s3://bucket/data" in str(caught.value) and SECRET not in str(caught.value)
    assert not list(tmp_path.glob("gone.submission*"))
