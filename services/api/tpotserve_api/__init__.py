"""The prediction API: Flask + Flask-RESTful behind Gunicorn and nginx."""
