"""How torch's threads wait on a busy machine (issue 28 #8): spinning OpenMP threads burn the CPU time that
the threads they wait for need; on a busy machine they sleep (OMP_WAIT_POLICY=passive)."""

from vlmkit.commands.threads import choose_wait_policy


def test_threads_sleep_while_they_wait_on_a_busy_machine_only():
    for busy, policy in [(0.1, None), (0.6, None), (0.8, "passive"), (1.9, "passive")]:
        environ: dict[str, str] = {}
        choose_wait_policy(environ, busy=busy)
        assert environ.get("OMP_WAIT_POLICY") == policy, busy


def test_the_user_s_openmp_settings_are_kept():
    for mine in ({"OMP_WAIT_POLICY": "active"}, {"OMP_NUM_THREADS": "2"}):
        environ = dict(mine)
        choose_wait_policy(environ, busy=2.0)
        assert environ == mine
