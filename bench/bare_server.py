"""The baseline: a bare Tornado POST handler that reads the body and answers JSON."""

import asyncio
import sys

import tornado.web


class Bare(tornado.web.RequestHandler):
    def post(self, source: str) -> None:
        self.write({"accepted": 1, "duplicates": 0})


async def main(port: int) -> None:
    app = tornado.web.Application([(r"/webhooks/(?P<source>[^/]+)", Bare)], log_function=lambda h: None)
    app.listen(port, "127.0.0.1")
    await asyncio.Event().wait()


if __name__ == "__main__":
    asyncio.run(main(int(sys.argv[1])))
