"""Suites of conformance cases (SPEC section 10). Each module's ``cases()`` returns its Cases."""
