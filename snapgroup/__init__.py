"""snapgroup"""
