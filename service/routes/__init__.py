"""HTTP routes: thin functions that validate the request, call the service code and shape the answer."""
