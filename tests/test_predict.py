"""Model registry (alias `champion`), the `appliedtorch-predict` command and the champion served
by `mlflow models serve`."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
from PIL import Image

from appliedtorch.data.download.fetch import download
from appliedtorch.data.loading import load_dataset
from appliedtorch.tracking import should_promote
from helpers import REPO, run_script
from helpers.servers import free_port

PREDICT = str(Path(sys.executable).parent / "appliedtorch-predict")
MLFLOW = str(Path(sys.executable).parent / "mlflow")
# README's one-liner: a grey PNG's pixels as the JSON body of POST /invocations, shape (1, 1, H, W).
PNG_TO_JSON = (
    "import json, sys, numpy as np; from PIL import Image; "
    'print(json.dumps({"inputs": [[np.asarray(Image.open(sys.argv[1]).convert("L")).tolist()]]}))'
)


def predict(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [PREDICT, *map(str, args)], cwd=cwd, capture_output=True, text=True, timeout=300
    )


def version(acc: float, md5: str = "a.dir", source: str = "upstream") -> dict[str, str]:
    return {"test_accuracy": repr(acc), "data.md5": md5, "data.source": source}


@pytest.mark.parametrize(
    ("new", "champion", "promote"),
    [
        (version(0.9), None, True),
        (version(0.91), version(0.90), True),
        (version(0.90), version(0.90), False),  # a tie keeps the champion
        (version(0.89), version(0.90), False),
        (
            version(0.5, "b.dir"),
            version(0.9, "a.dir", "synthetic"),
            True,
        ),  # real data beats synthetic
        (version(0.99, "b.dir"), version(0.5, "a.dir"), False),  # other test data: not comparable
        (version(0.99, "b.dir", "synthetic"), version(0.5, "a.dir"), False),
    ],
)
def test_champion_rule(new, champion, promote):
    assert should_promote(new, champion)[0] is promote


@pytest.fixture(scope="module")
def trained(tmp_path_factory, mlflow_template_db):
    """A tiny MLP trained by the real stage with registration on, in its own tracking DB."""
    import shutil

    root = tmp_path_factory.mktemp("predict")
    db = root / "mlflow.db"
    shutil.copy(mlflow_template_db, db)
    uri = f"sqlite:///{db}"
    data_dir = root / "data" / "raw" / "mnist"
    download("mnist", data_dir, source="synthetic", synthetic_sizes=(1500, 300))
    return root, uri, data_dir


def run_mlp(root: Path, uri: str, data_dir: Path, **mlp) -> subprocess.CompletedProcess:
    import yaml

    from helpers import REPO

    params = yaml.safe_load((REPO / "params.yaml").read_text())
    params["device"] = "cpu"
    params["mlp"].update(mlp)
    params["tracking"]["register_models"] = True
    path = root / "params.yaml"
    path.write_text(yaml.safe_dump(params))
    env = {"MLFLOW_TRACKING_URI": uri}
    proc = run_script(
        "stages/train.py", "--section", "mlp",
        "--params", path, "--data", data_dir, "--model", root / "models" / "mlp.pt",
        "--reports", root / "reports" / "mlp", cwd=root, env=env,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    # Registration is its own stage (dvc.yaml's `register`), after the outputs have landed.
    metrics = root / "reports" / "mlp" / "metrics.json"
    registered = run_script("stages/register.py", "--params", path,
                            "--classifier", "mlp", metrics, root / "models" / "mlp.pt", cwd=root, env=env)  # fmt: skip
    assert registered.returncode == 0, registered.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_register_champion_and_predict_a_png(trained, monkeypatch):
    root, uri, data_dir = trained
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    run_mlp(root, uri, data_dir, epochs=2)
    client = mlflow.MlflowClient(uri)
    champion = client.get_model_version_by_alias("mnist-mlp", "champion")
    assert str(champion.version) == "1"

    # A much weaker model on the same data: registered as version 2, champion stays at 1.
    run_mlp(root, uri, data_dir, epochs=1, lr=1e-6)
    versions = client.search_model_versions("name='mnist-mlp'")
    assert sorted(str(v.version) for v in versions) == ["1", "2"]
    assert str(client.get_model_version_by_alias("mnist-mlp", "champion").version) == "1"

    # Test images written as PNGs, classified through the registry and through the .pt file.
    data = load_dataset("mnist", data_dir)
    paths = []
    for i in range(8):
        path = root / f"digit{i}.png"
        Image.fromarray(data.test_images[i, 0].numpy()).save(path)
        paths.append(path)
    env_uri = {"MLFLOW_TRACKING_URI": uri}
    monkeypatch.setenv("MLFLOW_TRACKING_URI", env_uri["MLFLOW_TRACKING_URI"])
    by_registry = predict("--model", "models:/mnist-mlp@champion", *paths, cwd=root)
    assert by_registry.returncode == 0, by_registry.stderr[-2000:]
    lines = by_registry.stdout.strip().splitlines()
    assert len(lines) == 8
    labels = [line.split("\t")[1] for line in lines]
    probs = [float(line.split("\t")[2]) for line in lines]
    assert all(0.0 < p <= 1.0 for p in probs)
    truth = [data.classes[int(y)] for y in data.test_labels[:8]]
    assert sum(a == b for a, b in zip(labels, truth, strict=True)) >= 5  # the champion learned

    # A model file works too (here the weaker second model), with the top 3 classes.
    by_file = predict("--model", root / "models" / "mlp.pt", "--top", "3", paths[0], cwd=root)
    assert by_file.returncode == 0, by_file.stderr
    fields = by_file.stdout.strip().split("\t")
    assert len(fields) == 7 and fields[0] == str(paths[0])
    assert float(fields[2]) >= float(fields[4]) >= float(fields[6])


@pytest.mark.slow
def test_predict_errors_are_one_line(trained, tmp_path, monkeypatch):
    root, uri, data_dir = trained
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    model = root / "models" / "mlp.pt"
    if not model.exists():
        run_mlp(root, uri, data_dir, epochs=1)
    not_image = tmp_path / "notes.png"
    not_image.write_text("not an image")
    image = tmp_path / "ok.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(image)
    # A model file from before models took pixels: no input_dtype, the bare network's weights.
    saved = torch.load(model, weights_only=True)
    del saved["input_dtype"]
    saved["state_dict"] = {k[4:]: v for k, v in saved["state_dict"].items() if k[:4] == "net."}
    torch.save(saved, tmp_path / "old.pt")
    cases = [
        (["--model", tmp_path / "old.pt", image], "old.pt: an older model file"),
        (["--model", tmp_path / "nope.pt", image], "nope.pt: model file not found"),
        (["--model", model, not_image], "notes.png: not an image file"),
        (["--model", model, tmp_path / "missing.png"], "missing.png: file not found"),
        (
            ["--model", "models:/no-such-model@champion", image],
            "model 'models:/no-such-model@champion' not found",
        ),
    ]
    for args, message in cases:
        proc = predict(*args, cwd=tmp_path)
        assert proc.returncode == 1, proc.stderr
        lines = proc.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], (
            proc.stderr
        )


# ---- reading image files (no model needed) ------------------------------------------------------


def test_16_bit_grey_is_scaled_not_clipped(tmp_path):
    from appliedtorch.classify.inference.predict import read_image

    levels = np.arange(28 * 28, dtype=np.uint16).reshape(28, 28) % 256  # every 8-bit level
    path = tmp_path / "deep.png"
    Image.fromarray((levels * 257).astype(np.uint16)).save(path)  # 16-bit PNG: 0..65535
    assert Image.open(path).mode.startswith("I")
    got = read_image(path, (1, 28, 28))
    assert got.dtype == torch.uint8 and got.shape == (1, 28, 28)
    assert torch.equal(got[0], torch.from_numpy(levels.astype(np.uint8)))  # PIL alone: 255s
    rgb = read_image(path, (3, 28, 28))
    assert torch.equal(rgb[1], got[0])


def test_32_bit_integer_mode_is_read_as_16_bit_range():
    from appliedtorch.classify.inference.predict import _to_8bit

    values = np.array([[0, 257, 65535, 70000]], dtype=np.int32)
    assert np.asarray(_to_8bit(Image.fromarray(values, "I"))).tolist() == [[0, 1, 255, 255]]


def test_palette_and_alpha_transparency_become_black(tmp_path):
    import warnings

    from appliedtorch.classify.inference.predict import read_image

    index = np.zeros((28, 28), np.uint8)
    index[:, 14:] = 1  # right half: palette entry 1 (white)
    index[:7] = 2  # top rows: entry 2, red but transparent
    img = Image.fromarray(index, "P")
    img.putpalette([0, 0, 0, 255, 255, 255, 255, 0, 0] + [0] * 759)
    path = tmp_path / "palette.png"
    img.save(path, transparency=2)
    rgba = np.zeros((28, 28, 4), np.uint8)
    rgba[..., :3] = 255  # white everywhere, opaque only in the bottom half
    rgba[14:, :, 3] = 255
    alpha_path = tmp_path / "alpha.png"
    Image.fromarray(rgba, "RGBA").save(alpha_path)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # PIL's "palette images with transparency" warning
        grey = read_image(path, (1, 28, 28))[0]
        rgb = read_image(path, (3, 28, 28))
        alpha = read_image(alpha_path, (1, 28, 28))[0]
    assert grey[:7].max() == 0 and rgb[:, :7].max() == 0  # transparent: black, not red
    assert grey[7:, 14:].min() == 255 and grey[7:, :14].max() == 0
    assert rgb[:, 7:, 14:].min() == 255
    assert alpha[:14].max() == 0 and alpha[14:].min() == 255


@pytest.mark.parametrize("limit", [500, 100])  # 784 pixels: PIL warns (1x-2x) / raises (> 2x)
def test_image_over_the_pixel_limit_is_refused(limit, tmp_path, monkeypatch):
    from appliedtorch.classify.inference.predict import read_image
    from appliedtorch.core.errors import AppliedTorchError

    path = tmp_path / "big.png"
    Image.fromarray(np.zeros((28, 28), np.uint8)).save(path)
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", limit)
    with pytest.raises(AppliedTorchError) as info:
        read_image(path, (1, 28, 28))
    assert str(info.value) == (
        f"{path}: more than {limit} pixels (PIL's Image.MAX_IMAGE_PIXELS), refused as a "
        "possible decompression bomb; resize it first"
    )


def _truncated_png(path: Path) -> None:
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64), np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:200])


UNREADABLE = {
    "text": (lambda p: p.write_text("not an image"), "not an image file PIL can read"),
    "empty": (lambda p: p.write_bytes(b""), "not an image file PIL can read"),
    "truncated": (_truncated_png, "not an image file PIL can read"),
    "directory": (lambda p: p.mkdir(), "a directory, not an image file"),
    "missing": (lambda p: None, "file not found"),
}


@pytest.mark.parametrize("case", UNREADABLE)
def test_unreadable_image_is_one_line_naming_the_file(case, tmp_path, capsys):
    from appliedtorch.classify.inference.predict import read_image
    from appliedtorch.core.cli import run_stage

    make, message = UNREADABLE[case]
    path = tmp_path / "x.png"
    make(path)
    with pytest.raises(SystemExit) as info:
        run_stage(lambda: read_image(path, (3, 32, 32)))
    assert info.value.code == 1
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error: {path}: {message}"), lines
    assert len(lines[0]) < 300


# ---- serving ------------------------------------------------------------------------------------


def wait_for_ping(url: str, proc: subprocess.Popen, log: Path, timeout: float = 240) -> None:
    """Wait until the scoring server answers GET /ping; fail with its log if it dies first."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            with urllib.request.urlopen(f"{url}/ping", timeout=2) as response:
                if response.status == 200:
                    return
        except OSError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise AssertionError(
                f"mlflow models serve did not answer /ping:\n{log.read_text()[-3000:]}"
            )
        time.sleep(0.5)


@pytest.mark.slow
def test_served_champion_classifies_png_pixels_like_predict(trained, tmp_path, monkeypatch):
    """`mlflow models serve` on the registered champion takes a PNG's raw uint8 pixels over HTTP
    (built by README's one-liner) and answers the class `appliedtorch-predict` prints."""
    root, uri, data_dir = trained
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    client = mlflow.MlflowClient(uri)
    try:
        champion = client.get_model_version_by_alias("mnist-mlp", "champion")
    except mlflow.exceptions.MlflowException:  # this test alone: register one
        run_mlp(root, uri, data_dir, epochs=2)
        champion = client.get_model_version_by_alias("mnist-mlp", "champion")
    data = load_dataset("mnist", data_dir)
    png = tmp_path / "digit.png"
    Image.fromarray(data.test_images[0, 0].numpy()).save(png)
    body = readme_request_body(png, data.test_images[:1].numpy())
    answer = serve_and_post("models:/mnist-mlp@champion", body, tmp_path)
    print(f"POST /invocations {len(body)} bytes -> {json.dumps(answer)}")  # shown with -s

    (probs,) = answer["predictions"]  # one image: ten class probabilities
    assert len(probs) == 10 and sum(probs) == pytest.approx(1.0, abs=1e-5)
    served = data.classes[int(np.argmax(probs))]
    by_predict = predict("--model", "models:/mnist-mlp@champion", png, cwd=root)
    assert by_predict.returncode == 0, by_predict.stderr[-2000:]
    _, label, probability = by_predict.stdout.strip().split("\t")
    assert label == served
    assert float(probability) == pytest.approx(max(probs), abs=5e-5)  # printed with 4 decimals
    # The same model through its run: the same line.
    by_run = predict("--model", f"runs:/{champion.run_id}/model", png, cwd=root)
    assert by_run.returncode == 0, by_run.stderr[-2000:]
    assert by_run.stdout == by_predict.stdout


def readme_request_body(png: Path, pixels: np.ndarray) -> bytes:
    """The JSON body README's one-liner makes of `png`: its raw uint8 `pixels`, as they are."""
    assert PNG_TO_JSON in (REPO / "README.md").read_text()
    made = subprocess.run(
        [sys.executable, "-c", PNG_TO_JSON, png], capture_output=True, text=True, check=True
    )
    body = made.stdout.encode()
    assert np.array_equal(np.array(json.loads(body)["inputs"], dtype=np.uint8), pixels)
    return body


def serve_and_post(model_uri: str, body: bytes, tmp_path: Path) -> dict:
    """`mlflow models serve` of `model_uri` on a free port; the JSON it answers `body` with."""
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    log = tmp_path / "serve.log"
    command = [MLFLOW, "models", "serve", "-m", model_uri,
               "--env-manager", "local", "--host", "127.0.0.1", "--port", str(port)]  # fmt: skip
    # As in an activated virtual environment: the server execs `uvicorn` found on PATH.
    path = os.pathsep.join([str(Path(sys.executable).parent), os.environ.get("PATH", "")])
    with log.open("w") as out:
        # Its own process group: the server's workers are stopped with it.
        server = subprocess.Popen(
            command, cwd=tmp_path, env={**os.environ, "PATH": path}, stdout=out,
            stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
    try:
        wait_for_ping(url, server, log)
        request = urllib.request.Request(
            f"{url}/invocations", data=body, headers={"Content-Type": "application/json"}
        )
        with urllib.request.urlopen(request, timeout=120) as response:
            assert response.status == 200
            return json.loads(response.read())
    finally:
        with contextlib.suppress(ProcessLookupError):  # the group may have exited already
            os.killpg(server.pid, signal.SIGTERM)
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait()


# ---- a test image to try, and images of another kind (no training needed) ---------------------


def predict_here(argv: list, capsys) -> tuple[int, str, str]:
    """appliedtorch-predict in this process: exit code, stdout, stderr."""
    from appliedtorch.classify.inference.predict import main

    capsys.readouterr()
    with pytest.raises(SystemExit) as info:
        main([str(a) for a in argv])
        raise SystemExit(0)
    out = capsys.readouterr()
    return info.value.code, out.out, out.err


@pytest.fixture(scope="module")
def tiny_mnist(tmp_path_factory) -> Path:
    data_dir = tmp_path_factory.mktemp("tiny") / "data/raw/mnist"
    download("mnist", data_dir, "synthetic", synthetic_sizes=(40, 20))
    return data_dir


def test_export_a_test_image_then_predict_it(tiny_mnist, tmp_path, capsys, monkeypatch):
    from helpers.models import tiny_model_file

    monkeypatch.chdir(tmp_path)
    tiny_model_file(tmp_path / "mlp.pt", "mlp")
    code, out, err = predict_here(["--export-test-image", tiny_mnist, "digit.png", "--index", 5],
                                  capsys)  # fmt: skip
    data = load_dataset("mnist", tiny_mnist)
    label = data.classes[int(data.test_labels[5])]
    assert code == 0 and err == ""
    assert out == f"wrote digit.png: mnist (synthetic) test image 5, class {label}\n"
    pixels = np.asarray(Image.open(tmp_path / "digit.png"))
    assert np.array_equal(pixels, data.test_images[5, 0].numpy())  # lossless, grey, 28x28
    assert not list(tmp_path.glob("*.tmp"))

    code, out, err = predict_here(["--model", "mlp.pt", "digit.png"], capsys)  # README's line
    assert code == 0 and err == "", err  # the model's own kind of image: no warning
    path, name, prob = out.strip().split("\t")
    assert (
        path == "digit.png" and name in [f"class {i}" for i in range(10)] and 0 < float(prob) <= 1
    )


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["{data}", "d.png", "--index", "20"], "--index 20: the mnist test set in {data} has 20 images (0 to 19)"),
        (["{data}", "d.png", "--index", "-1"], "--index -1: the mnist test set"),
        (["{data}/MNIST", "d.png"], "{data}/MNIST: no downloaded dataset"),
        (["{data}", "d.jpg"], "d.jpg: the test image is written as PNG; name it *.png"),
        (["{data}", "no/such/dir/d.png"], "cannot write no/such/dir/d.png"),
    ],
)  # fmt: skip
def test_export_refusals_are_one_line_and_write_nothing(argv, message, tiny_mnist, tmp_path,
                                                         capsys, monkeypatch):  # fmt: skip
    monkeypatch.chdir(tmp_path)
    (tmp_path / "no").write_text("a file where a directory would go")
    argv = [a.format(data=tiny_mnist) for a in argv]
    code, out, err = predict_here(["--export-test-image", *argv], capsys)
    assert code == 1 and out == ""
    assert err.splitlines() == [err.strip()] and err.startswith(
        f"error: {message.format(data=tiny_mnist)}"
    )
    assert sorted(p.name for p in tmp_path.iterdir()) == ["no"]


def grey_png(path: Path, size: int = 28) -> Path:
    Image.fromarray(np.random.default_rng(0).integers(0, 255, (size, size), np.uint8)).save(path)
    return path


@pytest.mark.parametrize(
    ("net_name", "image", "warning"),
    [
        ("cnn", lambda p: grey_png(p), "is 1x28x28 grey; the model expects 3x32x32 colour: "
                                       "converted to colour and resized"),
        ("mlp", lambda p: Image.new("RGB", (28, 28), (200, 10, 10)).save(p),
         "is 3x28x28 colour; the model expects 1x28x28 grey: converted to grey"),
        ("mlp", lambda p: grey_png(p, 64), "is 1x64x64 grey; the model expects 1x28x28 grey: resized"),
        ("mlp", lambda p: grey_png(p), None),
        ("mlp", lambda p: Image.fromarray(np.full((28, 28, 3), 90, np.uint8)).save(p), None),  # grey RGB
        ("cnn", lambda p: Image.new("RGB", (32, 32), (1, 2, 3)).save(p), None),
    ],
)  # fmt: skip
def test_an_image_of_another_kind_is_converted_with_a_warning(net_name, image, warning, tmp_path,
                                                              capsys):  # fmt: skip
    from helpers.models import tiny_model_file

    tiny_model_file(tmp_path / "m.pt", net_name)
    path = tmp_path / "x.png"
    image(path)
    code, out, err = predict_here(["--model", tmp_path / "m.pt", path], capsys)
    assert code == 0 and out.startswith(f"{path}\tclass ")  # still an answer
    if warning is None:
        assert err == ""
    else:
        assert err.splitlines() == [f"warning: {path} {warning}; the answer may mean little"]


# ---- the model's metadata is checked before any network is built -------------------------------

HUGE = {"hidden_size": 65536, "hidden_layers": 256}  # ~1.1e12 weights: 4 TB if it were built
METADATA = {  # edit of a valid model file -> the one line it must give
    "unknown-key": (lambda d: d.update(note="hi"), "unknown key 'note'"),
    "net-not-a-string": (lambda d: d.update(net=["mlp"]), r"net must be 'mlp', 'cnn' or 'resnet' \(got \['mlp'\]\)"),
    "net-unknown": (lambda d: d.update(net="vit"), "net must be 'mlp', 'cnn' or 'resnet' .got 'vit'."),
    "model-args-unknown": (lambda d: d["model_args"].update(act="gelu"), "unknown key 'model_args.act'"),
    "model-args-too-wide": (lambda d: d["model_args"].update(hidden_size=10**6),
                            r"model_args\.hidden_size must be <= 65536 \(got 1000000\)"),
    "model-args-not-int": (lambda d: d["model_args"].update(hidden_size=16.0),
                           r"model_args\.hidden_size must be an integer \(got 16\.0\)"),
    "model-args-huge-net": (lambda d: d["model_args"].update(HUGE),
                            r"state_dict\['net\.fc1\.weight'\] must be \(65536, 784\) \(got \(16, 784\)\)"),
    "classes-one-short": (lambda d: d["classes"].pop(), r"classes must name each of the 10 outputs \(got 9 names\)"),
    "classes-a-string": (lambda d: d.update(classes="0123456789"), "classes must be a list"),
    "class-name-with-tab": (lambda d: d["classes"].__setitem__(0, "a\tb"), "class name 'a.tb' holds a tab"),
    "class-name-markup": (lambda d: d["classes"].__setitem__(0, "</script>"), "class name '</script>' holds a markup"),
    "class-names-twice": (lambda d: d["classes"].__setitem__(1, d["classes"][0]), "class name 'class 0' .*twice"),
    "mean-a-string": (lambda d: d.update(mean="0.5"), "mean must be a list"),
    "mean-per-channel": (lambda d: d.update(mean=[0.5, 0.5, 0.5]), r"mean must have one value per channel \(1, got 3\)"),
    "std-zero": (lambda d: d.update(std=[0.0]), r"mean must be in \[0, 1\] and std in \[0\.001, 1\]"),
    "std-nan": (lambda d: d.update(std=[float("nan")]), r"std\.0 must be a finite number \(got nan\)"),
    "input-shape-huge": (lambda d: d.update(input_shape=[3, 10**5, 10**5]),
                         r"input_shape must be 1 or 3 channels of at most 512x512 pixels \(got 3x100000x100000\)"),
    "input-shape-not-the-net's": (lambda d: d.update(input_shape=[1, 32, 32]),
                                  r"model_args\.in_features must be 1x32x32 = 1024 \(input_shape\)"),
    "state-dict-other-shape": (lambda d: d["state_dict"].update({"net.fc2.bias": torch.zeros(3)}),
                               r"state_dict\['net\.fc2\.bias'\] must be \(16,\) \(got \(3,\)\)"),
    "state-dict-extra": (lambda d: d["state_dict"].update({"x": torch.zeros(1)}), "state_dict has 'x', which the mlp"),
    "state-dict-missing": (lambda d: d["state_dict"].pop("net.fc3.bias"), r"state_dict lacks 'net\.fc3\.bias'"),
    "state-dict-ints": (lambda d: d["state_dict"].update({"net.fc3.bias": torch.zeros(10, dtype=torch.int64)}),
                        "state_dict.'net.fc3.bias'. must hold floats"),
    "not-a-mapping": (lambda d: d.clear(), r"not an appliedtorch model file"),
}  # fmt: skip


@pytest.mark.parametrize("case", METADATA)
def test_model_file_metadata_is_checked_before_building(case, tmp_path, capsys, monkeypatch):
    import re
    import time

    from appliedtorch.classify.nets import models
    from helpers.models import tiny_model_file

    saved = tiny_model_file(tmp_path / "mlp.pt", "mlp")
    edit, message = METADATA[case]
    edit(saved)
    torch.save(saved, tmp_path / "evil.pt")
    grey_png(tmp_path / "x.png")
    built, real = [], models.MLP.__init__

    def build(self, *args, **kwargs):  # wherever the network is built from: which device?
        built.append(torch.get_default_device().type)
        real(self, *args, **kwargs)

    monkeypatch.setattr(models.MLP, "__init__", build)
    start = time.monotonic()
    code, out, err = predict_here(["--model", tmp_path / "evil.pt", tmp_path / "x.png"], capsys)
    assert time.monotonic() - start < 10
    assert code == 1 and out == "" and "Traceback" not in err
    assert err.splitlines() == [err.strip()] and len(err) < 300
    assert re.match(rf"error: {re.escape(str(tmp_path / 'evil.pt'))}: {message}", err), err
    assert set(built) <= {"meta"}  # refused before a network was built in memory


def test_logged_model_metadata_is_checked_before_mlflow_loads_it(monkeypatch, capsys, tmp_path):
    from appliedtorch import tracking

    loaded = []

    def fake_load(uri, check=None):
        check({"classes": ["a"] * 10, "mean": [0.5], "std": [0.5], "input_shape": [1, 28, 9999],
               "input_dtype": "uint8"})  # fmt: skip
        loaded.append(uri)

    monkeypatch.setattr(tracking, "load_logged_model", fake_load)
    code, out, err = predict_here(["--model", "models:/m@champion", grey_png(tmp_path / "x.png")],
                                  capsys)  # fmt: skip
    assert code == 1 and loaded == []
    assert err == ("error: model 'models:/m@champion': input_shape must be 1 or 3 channels of at "
                   "most 512x512 pixels (got 1x28x9999)\n")  # fmt: skip


def test_an_image_stored_upside_down_is_read_as_every_viewer_shows_it(tmp_path):
    """EXIF Orientation 3 (rotate 180) is applied before the pixels reach the model: a digit
    stored upside down with that tag reads as the upright digit, not as its rotation."""
    from PIL import Image

    from appliedtorch.classify.inference.predict import read_image

    upright = np.zeros((28, 28), dtype=np.uint8)
    upright[4:12, 10:14] = 255  # a mark near the top: upside down, it is near the bottom
    Image.fromarray(upright).save(tmp_path / "upright.png")
    exif = Image.Exif()
    exif[0x0112] = 3  # Orientation: rotated 180
    Image.fromarray(upright[::-1, ::-1].copy()).save(tmp_path / "tagged.png", exif=exif)
    tagged = read_image(tmp_path / "tagged.png", (1, 28, 28))
    assert torch.equal(tagged, read_image(tmp_path / "upright.png", (1, 28, 28)))
    assert tagged[0, 4:12, 10:14].min() == 255
