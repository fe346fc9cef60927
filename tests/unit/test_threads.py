"""vlmkit's thread count on a busy machine (issue 28 #8): torch's one thread per core waits at every parallel
region for threads that other processes keep off the cores; as many threads as cores are free instead."""

from vlmkit.commands.threads import choose_threads


def test_a_busy_machine_gets_as_many_threads_as_cores_are_free():
    for busy, threads in [(0.1, None), (0.6, None), (0.8, "1"), (1.9, "1")]:
        environ: dict[str, str] = {}
        choose_threads(environ, cores=2, busy=busy)
        assert environ.get("OMP_NUM_THREADS") == threads, busy
    environ = {}
    choose_threads(environ, cores=16, busy=3.2)
    assert environ == {"OMP_NUM_THREADS": "13", "OMP_WAIT_POLICY": "passive"}
    environ = {"OMP_WAIT_POLICY": "active"}
    choose_threads(environ, cores=2, busy=1.0)
    assert environ == {"OMP_NUM_THREADS": "1", "OMP_WAIT_POLICY": "active"}


def test_the_user_s_thread_count_is_kept():
    environ = {"OMP_NUM_THREADS": "2"}
    choose_threads(environ, cores=2, busy=2.0)
    assert environ == {"OMP_NUM_THREADS": "2"}
