"""Node agent pieces that need no process: the engine environment, the log tail."""

from workers.agent import engine_environment, log_tail


def test_engines_do_not_inherit_control_plane_secrets():
    env = engine_environment(
        {
            "PATH": "/bin",
            "HF_HOME": "/cache",
            "DATABASE_URL": "postgresql://x",
            "SECRET_KEY_FILE": "/run/secret",
            "STRIPE_SECRET_KEY": "sk",
            "BERTH_KEY_PEPPERS": "a:b",
        }
    )
    assert env == {"PATH": "/bin", "HF_HOME": "/cache"}


def test_log_tail_reads_only_the_end(tmp_path):
    path = tmp_path / "engine.log"
    path.write_text("".join(f"{i}\n" for i in range(1000)))
    assert log_tail(path, lines=3) == "997\n998\n999"
    assert log_tail(tmp_path / "missing.log") == ""
