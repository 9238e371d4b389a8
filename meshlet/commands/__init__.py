"""One module per `meshlet` command: its flags (`register`) and how it runs."""
