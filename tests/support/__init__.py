"""What the tests share that is not a fixture: helpers imported by test modules (pytest's
conftest files hold only fixtures, and are never imported)."""
