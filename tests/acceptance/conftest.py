from tests.acceptance.newcomer import model_server, newcomer, stop_db_after  # noqa: F401  (fixtures)
