import pytest

# The shared helpers assert too (a stream's status, a pending message): have pytest rewrite
# their asserts as it does those of test modules and conftest.py, for the same failure reports.
pytest.register_assert_rewrite("tests.factories", "tests.helpers")
