"""Sends one customer journey to omnia through a real tracker SDK, as a shop's backend
would: an anonymous page view, a product view and a cart addition (by Segment's e-commerce
names; the order also carries a `currency` the config does not declare), an identify that links
the cookie to an account and an e-mail address, a purchase, and an alias of a second
cookie. Run by tests/sdks.rs with the SDKs that scripts/test installs:

    python send.py segment|rudder http://127.0.0.1:PORT SUFFIX

Exits non-zero if the SDK reported any error (a refused request, a failed upload).
"""

import sys

sdk, host, suffix = sys.argv[1], sys.argv[2], sys.argv[3]
errors = []


def on_error(error, items):
    errors.append(f"{error} ({len(items)} events)")


if sdk == "segment":
    from segment.analytics import Client
elif sdk == "rudder":
    from rudderstack.analytics import Client
else:
    sys.exit(f"unknown sdk {sdk}: segment or rudder")

client = Client(write_key="omnia-test", host=host, on_error=on_error, max_retries=2)
user, cookie, second = f"sofia-{suffix}", f"c-{suffix}", f"d-{suffix}"
client.page(anonymous_id=cookie, name="home", properties={"url": "/", "campaign": "flyer"})
# Segment's e-commerce spec names, which the default config aliases.
client.track(anonymous_id=cookie, event="Product Viewed",
             properties={"product_id": "SHOE-1", "category": "shoes", "price": 59.5})
client.track(anonymous_id=cookie, event="Product Added",
             properties={"product_id": "SHOE-1", "category": "shoes", "price": 59.5, "quantity": 1})
client.identify(user_id=user, anonymous_id=cookie,
                traits={"email": f"{user}@example.nl", "country": "NL", "email_opt_in": True})
client.track(user_id=user, event="purchase",
             properties={"amount": 59.5, "sku": "SHOE-1", "category": "shoes", "order_id": f"o-{suffix}"})
client.track(user_id=user, event="Order Completed",
             properties={"revenue": 120.0, "product_id": "BAG-2", "category": "bags", "order_id": f"p-{suffix}",
                         "currency": "EUR"})
client.alias(previous_id=second, user_id=user)
client.flush()
client.join()
if errors:
    sys.exit("the SDK reported errors: " + "; ".join(errors))
