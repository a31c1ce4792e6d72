-- 100,000 products (92% active) in 250 categories, each with a default variant: the data the
-- listing query plans in docs/catalog-query-plans.md are measured on (scripts/explain-catalog).
INSERT INTO categories (id, name, slug) SELECT gen_random_uuid(), 'Cat '||i, 'cat-'||i FROM generate_series(1,50) i;
INSERT INTO categories (id, name, slug, parent_id) SELECT gen_random_uuid(), 'Sub '||i, 'sub-'||i, (SELECT id FROM categories WHERE slug='cat-'||(1+i%50)) FROM generate_series(1,200) i;
ALTER TABLE products DISABLE TRIGGER products_price_changed;
INSERT INTO products (id, type, name, slug, description, status, category_id, brand, price, tags, rating_average, rating_count, created_at, price_min, price_max, skus)
SELECT gen_random_uuid(), 'simple',
  (ARRAY['Wireless','Compact','Deluxe','Classic','Pro','Ultra','Mini','Smart'])[1+i%8]||' '||(ARRAY['Headphones','Speaker','Lamp','Knife','Skillet','Tent','Hoodie','Vase','Kettle','Board'])[1+(i/8)%10]||' '||i,
  'p-'||i, 'A fine product number '||i||' with '||(ARRAY['battery','steel','cotton','ceramic','walnut'])[1+i%5]||' parts.',
  CASE WHEN i%20=0 THEN 'draft' WHEN i%33=0 THEN 'archived' ELSE 'active' END,
  (SELECT id FROM categories WHERE slug='sub-'||(1+i%200)),
  (ARRAY['Acme','Sonic','Blade','Lumen','Northwind'])[1+i%5], 500+(i*37)%50000,
  ARRAY[(ARRAY['wireless','steel','cotton','led','organic'])[1+i%5], (ARRAY['gift','sale','new'])[1+i%3]],
  (i%50)/10.0, i%100, now() - (i||' minutes')::interval, 500+(i*37)%50000, 500+(i*37)%50000, 'SKU-'||i
FROM generate_series(1,100000) i;
ALTER TABLE products ENABLE TRIGGER products_price_changed;
ALTER TABLE product_variants DISABLE TRIGGER product_variants_changed;
INSERT INTO product_variants (id, product_id, sku, stock, is_default) SELECT gen_random_uuid(), id, skus, (abs(hashtext(skus))%20), true FROM products;
ALTER TABLE product_variants ENABLE TRIGGER product_variants_changed;
ANALYZE;
