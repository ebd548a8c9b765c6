"""Thin routes: parse the body, call the service, format the result in the API's shape."""
