"""The orderstream producer: an aiohttp API that validates orders and appends them to a Redis stream.

``python -m producer`` serves it on ``PORT`` (3000). :func:`producer.app.create_app` builds the
application from :class:`producer.settings.ProducerSettings`.
"""
