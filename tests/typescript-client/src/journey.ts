// A customer's journey through the client generated from the served OpenAPI document: register,
// find a product (with facet counts), add it to the cart, check out, pay, and see the order paid.
// `tsc` checks every path, parameter, body and answer below against the generated types, so a
// change of the contract that breaks a client breaks this check; running it checks the answers.
//
// Environment: SHOP_BASE (the server), SHOP_PRODUCT_QUERY (a `q` that finds an active product in
// stock), SHOP_RUN_ID (makes the email unique).

import createClient from "openapi-fetch";

import type { components, paths } from "../generated/schema.js";

type Order = components["schemas"]["Order"];
type OrderStatus = components["schemas"]["OrderStatus"];

function env(name: string): string {
  const value = process.env[name];
  if (!value) {
    throw new Error(`${name} is not set`);
  }
  return value;
}

function check(condition: boolean, what: string): asserts condition {
  if (!condition) {
    throw new Error(`check failed: ${what}`);
  }
}

/** The data of an answer, or an error naming the step, its status and the problem's detail. */
function ok<T>(step: string, result: { data?: T; error?: unknown; response: Response }): T {
  if (result.data === undefined) {
    throw new Error(`${step}: ${result.response.status} ${JSON.stringify(result.error)}`);
  }
  return result.data;
}

const client = createClient<paths>({ baseUrl: env("SHOP_BASE") });
const email = `ts-client-${env("SHOP_RUN_ID")}@example.com`;
const password = "typescript-client-1";

const user = ok(
  "register",
  await client.POST("/api/v1/auth/register", {
    body: { email, password, name: "Tess Script" },
  }),
);
check(user.email === email && user.role === "customer", "registered as a customer");
check(!user.email_verified, "a new account is not verified yet");

const tokens = ok(
  "login",
  await client.POST("/api/v1/auth/login", { body: { email, password } }),
);
const auth = { Authorization: `Bearer ${tokens.access_token}` };

const listing = ok(
  "search",
  await client.GET("/api/v1/products", {
    params: {
      query: { q: env("SHOP_PRODUCT_QUERY"), in_stock: true, facets: "category,in_stock" },
    },
  }),
);
const summary = listing.items[0];
check(summary !== undefined, "the search finds the product");
check((listing.facets?.in_stock?.count ?? 0) >= 1, "the in_stock facet counts it");
const product = ok(
  "product",
  await client.GET("/api/v1/products/{id}", { params: { path: { id: summary.id } } }),
);
const variant = product.variants?.[0];
check(variant !== undefined && product.stock >= 1, "the product has a variant in stock");

const cart = ok(
  "add to cart",
  await client.POST("/api/v1/cart/items", {
    params: { header: { "Idempotency-Key": `ts-add-${env("SHOP_RUN_ID")}` } },
    headers: auth,
    body: { variant_id: variant.id, quantity: 1 },
  }),
);
check(cart.items.length === 1 && cart.total === variant.price, "the cart holds the one unit");

const order: Order = ok(
  "checkout",
  await client.POST("/api/v1/orders", {
    headers: auth,
    body: {
      shipping_address: {
        name: "Tess Script",
        line1: "1 Compiler Road",
        city: "Cambridge",
        postal_code: "CB1 1AA",
        country: "GB",
      },
    },
  }),
);
check(order.status === "pending" && order.total === cart.total, "the order is pending");

const payment = ok(
  "pay",
  await client.POST("/api/v1/orders/{id}/pay", {
    params: { path: { id: order.id } },
    headers: auth,
    body: { payment_method: "pm_card_visa" },
  }),
);
check(payment.status === "succeeded", `the payment succeeded (${payment.status})`);

// The order becomes paid when the provider's webhook arrives: wait for it, with a deadline.
const deadline = Date.now() + 20_000;
let status: OrderStatus = order.status;
while (status !== "paid") {
  check(Date.now() < deadline, `the order is paid within 20 s (it is ${status})`);
  await new Promise((resolve) => setTimeout(resolve, 200));
  const current = ok(
    "order",
    await client.GET("/api/v1/orders/{id}", {
      params: { path: { id: order.id } },
      headers: auth,
    }),
  );
  status = current.status;
}

console.log(
  JSON.stringify({ order: order.number, total: order.total, status, variant: variant.sku }),
);
