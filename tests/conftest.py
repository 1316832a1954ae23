from tests.services import stop_throwaways


def pytest_sessionfinish() -> None:
    stop_throwaways()
