UPDATE hot SET stock = stock - 1 WHERE id = 1 AND stock >= 1;
