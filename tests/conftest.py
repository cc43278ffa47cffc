pytest_plugins = ["tests.fix_postgres", "tests.fix_chip", "tests.fix_emitter", "tests.fix_processes", "tests.fix_proxy"]
