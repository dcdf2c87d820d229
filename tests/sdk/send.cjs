// Sends the customer journey of tests/sdk/send.py through @segment/analytics-node, the
// Segment SDK for Node.js, as a shop's Node backend would. Run by tests/sdks.rs with the
// package that scripts/test installs:
//
//     node send.cjs NODE_MODULES http://127.0.0.1:PORT SUFFIX
//
// Exits non-zero if the SDK reported any error (a refused request, a failed upload).
"use strict";

const path = require("path");
const [modules, host, suffix] = process.argv.slice(2);
const { Analytics } = require(path.join(modules, "@segment/analytics-node"));

const errors = [];
const analytics = new Analytics({
  writeKey: "omnia-test",
  host,
  path: "/v1/batch",
  flushAt: 20,
  flushInterval: 100,
  maxRetries: 2,
});
analytics.on("error", (error) => errors.push(String(error && (error.reason || error.message || error))));

const user = `sofia-${suffix}`;
const cookie = `c-${suffix}`;
const second = `d-${suffix}`;
analytics.page({ anonymousId: cookie, name: "home", properties: { url: "/", campaign: "flyer" } });
// Segment's e-commerce spec names, which the default config aliases.
analytics.track({
  anonymousId: cookie,
  event: "Product Viewed",
  properties: { product_id: "SHOE-1", category: "shoes", price: 59.5 },
});
analytics.track({
  anonymousId: cookie,
  event: "Product Added",
  properties: { product_id: "SHOE-1", category: "shoes", price: 59.5, quantity: 1 },
});
analytics.identify({
  userId: user,
  anonymousId: cookie,
  traits: { email: `${user}@example.nl`, country: "NL", email_opt_in: true },
});
analytics.track({
  userId: user,
  event: "purchase",
  properties: { amount: 59.5, sku: "SHOE-1", category: "shoes", order_id: `o-${suffix}` },
});
analytics.track({
  userId: user,
  event: "Order Completed",
  properties: { revenue: 120.0, product_id: "BAG-2", category: "bags", order_id: `p-${suffix}`, currency: "EUR" },
});
analytics.alias({ previousId: second, userId: user });

analytics.closeAndFlush({ timeout: 10000 }).then(() => {
  if (errors.length > 0) {
    console.error("the SDK reported errors: " + errors.join("; "));
    process.exit(1);
  }
});
