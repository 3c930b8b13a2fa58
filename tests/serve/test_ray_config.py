"""The Ray Serve path without Ray: its options checked, ``modelpress.serve`` importing without
the ``ray`` extra, and ``--ray`` without it as one error line naming the extra. (The deployment
itself: test_ray.py.)"""

import subprocess
import sys

import pytest
from typer.testing import CliRunner

import modelpress as mp
from modelpress.cli import app
from modelpress.serve import BatchPolicy, DecodePolicy
from modelpress.serve.ray_serve import RayConfig, RayNotInstalled, import_ray

runner = CliRunner()


def test_ray_config_is_validated_and_sizes_what_a_replica_holds():
    with pytest.raises(mp.ConfigError, match="replicas must be"):
        RayConfig(replicas=0)
    with pytest.raises(mp.ConfigError, match="threads per replica"):
        RayConfig(threads=0)
    with pytest.raises(mp.ConfigError, match="max_ongoing_requests"):
        RayConfig(max_ongoing_requests=0)
    with pytest.raises(mp.ConfigError, match="deadline"):
        RayConfig(deadline_s=0)
    # two batches in flight per replica (one running, one filling), within its queue
    assert RayConfig(policy=BatchPolicy(max_batch_size=16), decode=DecodePolicy(max_running=8)).ongoing == 32
    assert (
        RayConfig(
            policy=BatchPolicy(max_batch_size=8, max_queue=10), decode=DecodePolicy(max_queue=10)
        ).ongoing
        == 10
    )
    assert RayConfig(max_ongoing_requests=3).ongoing == 3
    assert RayConfig(policy=BatchPolicy(max_queue=40)).queued == 40
    assert RayConfig(replicas=2, threads=3).replica_threads == 3


def test_modelpress_serve_imports_without_ray():
    code = (
        "import sys; sys.modules['ray'] = None\n"  # an import of ray would fail
        "import modelpress.serve, modelpress.serve.ray_serve, modelpress.cli\n"
        "from modelpress.serve.ray_serve import RayNotInstalled, import_ray\n"
        "try:\n    import_ray()\nexcept RayNotInstalled as e:\n    print(e)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "pip install 'modelpress[ray]'" in out.stdout


def test_serve_ray_without_the_extra_is_one_error_line(monkeypatch, tmp_path):
    monkeypatch.setitem(sys.modules, "ray", None)  # as if not installed
    monkeypatch.setitem(sys.modules, "ray.serve", None)
    with pytest.raises(RayNotInstalled, match=r"pip install 'modelpress\[ray\]'"):
        import_ray()
    res = runner.invoke(app, ["serve", str(tmp_path), "--ray", "--replicas", "2"])
    msg = " ".join((res.stderr or res.output).split())
    assert res.exit_code == 2 and "error:" in msg and "pip install 'modelpress[ray]'" in msg, msg


def test_the_cli_checks_the_ray_options(tmp_path):
    res = runner.invoke(app, ["serve", str(tmp_path), "--ray-address", "auto"])
    assert res.exit_code == 2 and "--ray-address needs --ray" in " ".join(res.output.split())
    res = runner.invoke(app, ["serve", str(tmp_path), "--ray", "--routing", "round-robin"])
    assert res.exit_code == 2 and "Ray Serve's router" in " ".join(res.output.split())
    res = runner.invoke(app, ["serve", str(tmp_path / "nope"), "--ray", "--replicas", "0"])
    assert res.exit_code == 2 and "error:" in res.output
    res = runner.invoke(app, ["serve", str(tmp_path / "nope"), "--ray"])
    assert res.exit_code == 2 and "not an artifact directory" in " ".join(res.output.split())
