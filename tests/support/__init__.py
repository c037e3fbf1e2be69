"""Helpers shared by the test suite: real services, and later fakes and builders."""
