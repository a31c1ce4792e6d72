-- The catalog scripts/bench sells from: :products active simple products in one category, each
-- with a default variant holding :stock units (more than a run can sell, so no checkout is ever
-- short). Built as scripts/sql/catalog-100k.sql builds its products; the shop is started after it,
-- so the inventory shards load this stock.
INSERT INTO categories (id, name, slug) VALUES (gen_random_uuid(), 'Bench', 'bench');
ALTER TABLE products DISABLE TRIGGER products_price_changed;
INSERT INTO products (id, type, name, slug, description, status, category_id, brand, price, tags, rating_average, rating_count, created_at, price_min, price_max, skus)
SELECT gen_random_uuid(), 'simple',
  (ARRAY['Wireless','Compact','Deluxe','Classic','Pro','Ultra','Mini','Smart'])[1+i%8]||' '||(ARRAY['Headphones','Speaker','Lamp','Knife','Skillet','Tent','Hoodie','Vase','Kettle','Board'])[1+(i/8)%10]||' '||i,
  'bench-'||i, 'A fine product number '||i||' with '||(ARRAY['battery','steel','cotton','ceramic','walnut'])[1+i%5]||' parts.',
  'active', (SELECT id FROM categories WHERE slug='bench'),
  (ARRAY['Acme','Sonic','Blade','Lumen','Northwind'])[1+i%5], 500+(i*37)%50000,
  ARRAY[(ARRAY['wireless','steel','cotton','led','organic'])[1+i%5], (ARRAY['gift','sale','new'])[1+i%3]],
  (i%50)/10.0, i%100, now() - (i||' minutes')::interval, 500+(i*37)%50000, 500+(i*37)%50000, 'BENCH-'||i
FROM generate_series(1, :products) i;
ALTER TABLE products ENABLE TRIGGER products_price_changed;
ALTER TABLE product_variants DISABLE TRIGGER product_variants_changed;
INSERT INTO product_variants (id, product_id, sku, stock, is_default) SELECT gen_random_uuid(), id, skus, :stock, true FROM products;
ALTER TABLE product_variants ENABLE TRIGGER product_variants_changed;
ANALYZE;
